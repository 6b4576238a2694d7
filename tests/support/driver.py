"""A small async "KV driver": one interface over real etcd, etcdgw over gRPC, and etcdgw's Store.

Every method takes a request message (``etcdserverpb.*Request``) and returns either the response
message or a :class:`Failure` (gRPC status code + message, as a client sees an error). Nothing is
raised for an etcd-level error, so a test can compare the outcome of one request on two targets
with ``==`` after :func:`normalize`.

Implementations:
    GrpcDriver   grpclib Channel + ``pb.KvStub``; works against real etcd and the etcdgw server.
    StoreDriver  etcdgw's ``Store`` in-process (no server): responses are the store's encoded
                 bytes parsed with ``pb.*Response.parse``; ``EtcdError`` becomes a Failure.

:func:`normalize` zeroes ``cluster_id``, ``member_id`` and ``raft_term`` in every ResponseHeader
(nested Txn responses included): those legitimately differ between servers; everything else must
not.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import betterproto2
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from etcdgw._proto import etcdserverpb as pb
from etcdgw.errors import EtcdError

from .procs import Server

__all__ = [
    "Failure",
    "GrpcDriver",
    "KvDriver",
    "Outcome",
    "StoreDriver",
    "normalize",
    "walk_messages",
]

#: Client-side deadline for one RPC: a hung server fails the test instead of hanging it.
RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class Failure:
    """An error as the client sees it: gRPC status code (int) and the exact message."""

    code: int
    message: str

    def __repr__(self) -> str:
        return f"Failure({self.code}, {self.message!r})"


Outcome = Any  # a pb.*Response message or a Failure
M = TypeVar("M", bound=betterproto2.Message)


class KvDriver(Protocol):
    """What the differential and scenario tests need from a target."""

    name: str

    async def range(self, request: pb.RangeRequest) -> Outcome: ...
    async def put(self, request: pb.PutRequest) -> Outcome: ...
    async def delete_range(self, request: pb.DeleteRangeRequest) -> Outcome: ...
    async def txn(self, request: pb.TxnRequest) -> Outcome: ...
    async def compact(self, request: pb.CompactionRequest) -> Outcome: ...
    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# gRPC


class GrpcDriver:
    """The KV service of a real server (etcd or etcdgw) through grpclib."""

    def __init__(self, channel: Channel, name: str = "grpc") -> None:
        self.name = name
        self.channel = channel
        self.stub = pb.KvStub(channel)

    @classmethod
    def connect(cls, server: Server, *, client_cert: bool | None = None) -> GrpcDriver:
        """A driver for ``server`` (must be called with the event loop that will use it)."""
        context: ssl.SSLContext | None = None
        if server.tls is not None:
            context = ssl.create_default_context(cafile=str(server.tls.ca))
            context.set_alpn_protocols(["h2"])
            if client_cert if client_cert is not None else server.client_cert_auth:
                context.load_cert_chain(str(server.tls.client_cert), str(server.tls.client_key))
        channel = Channel(server.host, server.port, ssl=context)
        return cls(channel, name=server.kind)

    async def _call(self, method: Callable[..., Awaitable[M]], request: Any) -> M | Failure:
        try:
            return await method(request, timeout=RPC_TIMEOUT)
        except GRPCError as exc:
            return Failure(int(exc.status.value), exc.message or "")

    async def range(self, request: pb.RangeRequest) -> Outcome:
        return await self._call(self.stub.range, request)

    async def put(self, request: pb.PutRequest) -> Outcome:
        return await self._call(self.stub.put, request)

    async def delete_range(self, request: pb.DeleteRangeRequest) -> Outcome:
        return await self._call(self.stub.delete_range, request)

    async def txn(self, request: pb.TxnRequest) -> Outcome:
        return await self._call(self.stub.txn, request)

    async def compact(self, request: pb.CompactionRequest) -> Outcome:
        return await self._call(self.stub.compact, request)

    async def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------------------------
# in-process Store


class StoreDriver:
    """etcdgw's Store called directly: the pure core + commit pipeline, no gRPC in between.

    Requests go through a wire round trip (``parse(bytes(request))``) so the store sees exactly
    what the server would decode, including unknown enum values and explicitly-set oneofs.
    """

    def __init__(self, store: Any, backend: Any, name: str = "store") -> None:
        self.name = name
        self.store = store
        self.backend = backend

    @classmethod
    async def open(cls, data_dir: str | Path, backend: str = "embedded") -> StoreDriver:
        from etcdgw.backends import open_backend
        from etcdgw.store import Store

        be = await open_backend(backend, str(data_dir))
        store = await Store.open(be)
        return cls(store, be)

    async def _call(
        self, method: Callable[[Any], Awaitable[bytes]], request: M, response_type: type[Any]
    ) -> Outcome:
        wire_request = type(request).parse(bytes(request))
        try:
            body = await method(wire_request)
        except EtcdError as exc:
            return Failure(int(exc.code), exc.message)
        return response_type.parse(bytes(body))

    async def range(self, request: pb.RangeRequest) -> Outcome:
        return await self._call(self.store.range, request, pb.RangeResponse)

    async def put(self, request: pb.PutRequest) -> Outcome:
        return await self._call(self.store.put, request, pb.PutResponse)

    async def delete_range(self, request: pb.DeleteRangeRequest) -> Outcome:
        return await self._call(self.store.delete_range, request, pb.DeleteRangeResponse)

    async def txn(self, request: pb.TxnRequest) -> Outcome:
        return await self._call(self.store.txn, request, pb.TxnResponse)

    async def compact(self, request: pb.CompactionRequest) -> Outcome:
        return await self._call(self.store.compact, request, pb.CompactionResponse)

    async def close(self) -> None:
        await self.store.close()
        close = getattr(self.backend, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result


# ---------------------------------------------------------------------------------------------
# comparing


def walk_messages(message: Any) -> list[Any]:
    """``message`` and every message nested in it (lists included), depth first."""
    out: list[Any] = []
    stack = [message]
    while stack:
        m = stack.pop()
        if isinstance(m, list):
            stack.extend(reversed(m))
            continue
        if not isinstance(m, betterproto2.Message):
            continue
        out.append(m)
        for f in reversed(dataclasses.fields(m)):
            value = getattr(m, f.name)
            if isinstance(value, (betterproto2.Message, list)):
                stack.append(value)
    return out


def copy_message(message: M) -> M:
    """A deep copy through the wire (what a client would decode)."""
    return type(message).parse(bytes(message))


def normalize(outcome: Outcome) -> Outcome:
    """A copy of ``outcome`` with cluster_id, member_id and raft_term zeroed in every header.

    Failures are returned unchanged. Everything else (revisions, kvs, counts, flags, nested
    responses) is kept for comparison.
    """
    if not isinstance(outcome, betterproto2.Message):
        return outcome
    out = copy_message(outcome)
    for m in walk_messages(out):
        if isinstance(m, pb.ResponseHeader):
            m.cluster_id = 0
            m.member_id = 0
            m.raft_term = 0
    return out
