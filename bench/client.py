"""The load generator's etcd client: grpcio's asyncio API (C core) over a few HTTP/2 channels.

Hot requests that never change (a Get, a LIST) are encoded once and sent as bytes; responses that
only need counting are received as bytes. Everything else goes through google.protobuf (upb).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio

from bench.proto import rpc_pb2
from bench.targets import Target

_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Each channel its own TCP connection (grpc would otherwise share one subchannel).
    ("grpc.use_local_subchannel_pool", 1),
]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"


class Kv:
    """KV (and Maintenance/Status) calls spread round-robin over ``n`` channels."""

    def __init__(self, target: Target, channels: int = 1, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._channels: list[grpc.aio.Channel] = []
        for i in range(max(1, channels)):
            opts = [*_OPTIONS, ("bench.channel", f"{os.getpid()}-{i}")]
            if target.tls.enabled:
                ch = grpc.aio.secure_channel(target.endpoint, target.tls.credentials(), opts)
            else:
                ch = grpc.aio.insecure_channel(target.endpoint, opts)
            self._channels.append(ch)
        self._range_raw = [c.unary_unary("/etcdserverpb.KV/Range") for c in self._channels]
        self._range = self._stubs("KV/Range", rpc_pb2.RangeRequest, rpc_pb2.RangeResponse)
        self._put = self._stubs("KV/Put", rpc_pb2.PutRequest, rpc_pb2.PutResponse)
        self._txn = self._stubs("KV/Txn", rpc_pb2.TxnRequest, rpc_pb2.TxnResponse)
        self._delete = self._stubs(
            "KV/DeleteRange", rpc_pb2.DeleteRangeRequest, rpc_pb2.DeleteRangeResponse)
        self._status = self._channels[0].unary_unary(
            "/etcdserverpb.Maintenance/Status",
            request_serializer=rpc_pb2.StatusRequest.SerializeToString,
            response_deserializer=rpc_pb2.StatusResponse.FromString,
        )

    def _stubs(self, method: str, request: Any, response: Any) -> list[Any]:
        """One unary callable of ``/etcdserverpb.<method>`` per channel."""
        return [
            c.unary_unary(
                f"/etcdserverpb.{method}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            for c in self._channels
        ]

    @property
    def nchannels(self) -> int:
        return len(self._channels)

    async def range_raw(self, request: bytes, ch: int = 0) -> bytes:
        out: bytes = await self._range_raw[ch % len(self._channels)](request, timeout=self.timeout)
        return out

    async def range(self, request: Any, ch: int = 0) -> Any:
        return await self._range[ch % len(self._channels)](request, timeout=self.timeout)

    async def put(self, request: Any, ch: int = 0) -> Any:
        return await self._put[ch % len(self._channels)](request, timeout=self.timeout)

    async def txn(self, request: Any, ch: int = 0) -> Any:
        return await self._txn[ch % len(self._channels)](request, timeout=self.timeout)

    async def delete_prefix(self, prefix: bytes) -> None:
        req = rpc_pb2.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix))
        await self._delete[0](req, timeout=self.timeout)

    async def version(self) -> str | None:
        try:
            resp = await self._status(rpc_pb2.StatusRequest(), timeout=5.0)
        except grpc.aio.AioRpcError:
            return None
        return str(resp.version)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    async def load(
        self, items: Iterable[tuple[bytes, bytes]], *, batch: int = 100, concurrency: int = 16
    ) -> int:
        """Write ``items`` in Txns of ``batch`` puts, ``concurrency`` at a time; the last revision.

        Loading is not measured: it only has to be fast, hence batches (etcd's default
        ``--max-txn-ops`` is 128).
        """
        import asyncio

        it = iter(items)
        revision = 0

        async def worker(i: int) -> None:
            nonlocal revision
            while True:
                chunk = [kv for _, kv in zip(range(batch), it, strict=False)]
                if not chunk:
                    return
                ops = [
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v))
                    for k, v in chunk
                ]
                resp = await self.txn(rpc_pb2.TxnRequest(success=ops), ch=i)
                revision = max(revision, resp.header.revision)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return revision
