"""A small Lease client for tests: the five ``etcdserverpb.Lease`` methods over grpclib.

Unary calls return the response message or a :class:`~support.driver.Failure` (code + exact
message), like the KV driver; ``keepalive_stream`` opens one LeaseKeepAlive stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from etcdgw._proto import etcdserverpb as pb

from .driver import RPC_TIMEOUT, Failure

__all__ = ["KEEPALIVE", "LeaseClient"]

KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"


class LeaseClient:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stub = pb.LeaseStub(channel)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=RPC_TIMEOUT)
        except GRPCError as exc:
            return Failure(int(exc.status.value), exc.message or "")

    async def grant(self, ttl: int, lease_id: int = 0) -> Any:
        return await self._call(self.stub.lease_grant, pb.LeaseGrantRequest(ttl=ttl, id=lease_id))

    async def revoke(self, lease_id: int) -> Any:
        return await self._call(self.stub.lease_revoke, pb.LeaseRevokeRequest(id=lease_id))

    async def time_to_live(self, lease_id: int, keys: bool = False) -> Any:
        return await self._call(
            self.stub.lease_time_to_live, pb.LeaseTimeToLiveRequest(id=lease_id, keys=keys)
        )

    async def leases(self) -> Any:
        return await self._call(self.stub.lease_leases, pb.LeaseLeasesRequest())

    @contextlib.asynccontextmanager
    async def keepalive_stream(
        self,
    ) -> AsyncIterator[Stream[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]]:
        async with self.channel.request(
            KEEPALIVE,
            Cardinality.STREAM_STREAM,
            pb.LeaseKeepAliveRequest,
            pb.LeaseKeepAliveResponse,
            timeout=RPC_TIMEOUT,
        ) as stream:
            yield stream

    async def keepalive(self, lease_id: int) -> int:
        """One request on its own stream, then half-close: the TTL answered."""
        async with self.keepalive_stream() as stream:
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease_id), end=True)
            reply = await stream.recv_message()
            assert reply is not None
            assert await stream.recv_message() is None
            await stream.recv_trailing_metadata()
        return int(reply.ttl)
