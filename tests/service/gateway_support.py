"""Helpers for the service tests (imported by conftest.py and the test modules).

RawCodec/raw_call put arbitrary bytes on the wire; FakeStore stands in for the Store where a test
needs failures the real store never produces.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from etcdgw import Config
from etcdgw._proto import etcdserverpb as pb
from etcdgw.lease.table import LeaseTable
from etcdgw.mvcc.replica import Replica


def gateway_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "name": "service-test",
        "listen_client_urls": ("http://127.0.0.1:0",),
        "data_dir": str(tmp_path / "data"),
    }
    values.update(overrides)
    return Config(**values)


class RawCodec(CodecBase):
    """Bytes in, bytes out: lets a test put any payload on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


async def raw_call(
    channel: Channel,
    path: str,
    payload: bytes,
    *,
    cardinality: Cardinality = Cardinality.UNARY_UNARY,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """One request with ``payload`` as the message; the reply bytes, or GRPCError raised."""
    async with channel.request(
        path, cardinality, bytes, bytes, timeout=10, metadata=metadata
    ) as stream:
        await stream.send_message(payload, end=True)
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
    assert reply is not None
    return reply


class FakeBackend:
    closed = False

    def size(self) -> tuple[int, int]:
        return (8192, 4096)

    async def close(self) -> None:
        self.closed = True


class FakeStore:
    """The Store API with canned answers; ``fail[method] = exc`` makes that method raise."""

    instances: list[FakeStore] = []

    cluster_id = 0x1234
    member_id = 0x5678
    revision = 42

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.fail: dict[str, BaseException] = {}
        self.requests: list[Any] = []
        self.closed = False
        # What the watch hub reads and hooks into (no revision is ever applied here).
        self.replica = Replica()
        self.listeners: list[Any] = []
        self.compaction_listeners: list[Any] = []
        self.commit_listeners: list[Any] = []
        self.reload_listeners: list[Any] = []
        self.follower = None  # a private log: no tail, no reloads
        self.compact_revision = -1
        # What the lease manager reads (no lease is ever granted here).
        self.leases = LeaseTable()
        self.clock = time.monotonic

    def header(self, rev: int) -> bytes:
        return bytes(
            pb.ResponseHeader(
                cluster_id=self.cluster_id, member_id=self.member_id, revision=rev, raft_term=1
            )
        )

    @classmethod
    async def open(cls, backend: Any, *, max_txn_ops: int = 128, **_options: Any) -> FakeStore:
        store = cls(backend)
        cls.instances.append(store)
        return store

    async def close(self) -> None:
        self.closed = True

    async def read_barrier(self) -> None:
        """A private log: nothing to wait for (Status, Hash, HashKV and lease reads call it)."""

    def _header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.revision,
            raft_term=1,
        )

    async def _answer(self, name: str, request: Any, response: Any) -> bytes:
        self.requests.append(request)
        if name in self.fail:
            raise self.fail[name]
        return bytes(response)

    async def range(self, req: Any) -> bytes:
        return await self._answer("range", req, pb.RangeResponse(header=self._header()))

    async def put(self, req: Any) -> bytes:
        return await self._answer("put", req, pb.PutResponse(header=self._header()))

    async def delete_range(self, req: Any) -> bytes:
        return await self._answer(
            "delete_range", req, pb.DeleteRangeResponse(header=self._header())
        )

    async def txn(self, req: Any) -> bytes:
        return await self._answer("txn", req, pb.TxnResponse(header=self._header()))

    async def compact(self, req: Any) -> bytes:
        return await self._answer("compact", req, pb.CompactionResponse(header=self._header()))


async def expect_error(awaitable: Any) -> GRPCError:
    """Await a call that must fail; the GRPCError it failed with."""
    with pytest.raises(GRPCError) as raised:
        await awaitable
    return raised.value


async def h2_call(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[bytes, bytes]:
    """One gRPC call spoken with the ``h2`` package directly: exact header bytes and body
    bytes (prefix included) on the wire. Returns the response headers and trailers merged."""
    reader, writer = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"{host}:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *(extra_headers or []),
    ]
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)
    writer.write(conn.data_to_send())
    result: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        result.update(dict(event.headers))  # type: ignore[arg-type]
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    if (
                        isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                        and event.stream_id == stream_id
                    ):
                        return result
                writer.write(conn.data_to_send())
    finally:
        writer.close()


def grpc_frame(message: bytes, *, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(message).to_bytes(4, "big") + message
