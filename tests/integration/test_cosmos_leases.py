"""Leases with three gateways on one Cosmos container (issue 5, DESIGN "leases").

- Keepalives sent to a gateway that does not own expiry keep the lease alive: the owner sees
  the durable renewals and extends instead of expiring.
- Once keepalives stop, the keys go in ONE revision, deleted once, with DELETE events.
- SIGKILL a gateway (possibly the owner) while a lease is kept alive through another: nothing
  expires early during the takeover, and expiry still happens afterwards.
Durations are TTL-sized (2-3 s); waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from support.cosmos import drop_database_now, gateway_args, new_database
from support.procs import Server, start_etcdgw

from etcdgw._proto import etcdserverpb as pb

TTL = 3


@pytest.fixture
def gateways(tmp_path: Path, cosmos_endpoint: str) -> Iterator[list[Server]]:
    database = new_database()
    started = [
        start_etcdgw(tmp_path / f"gw{i}", name=f"gw{i}",
                     extra_args=gateway_args(cosmos_endpoint, database))
        for i in range(3)
    ]
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop()
        else:
            server.stopped = True
    drop_database_now(cosmos_endpoint, database)


class Client:
    def __init__(self, server: Server) -> None:
        self.channel = Channel(server.host, server.port)
        self.kv = pb.KvStub(self.channel)
        self.lease = pb.LeaseStub(self.channel)

    async def keepalive(self, lease_id: int) -> int:
        async with self.channel.request(
            "/etcdserverpb.Lease/LeaseKeepAlive", Cardinality.STREAM_STREAM,
            pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse, timeout=10,
        ) as stream:
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease_id), end=True)
            resp = await stream.recv_message()
            assert resp is not None
            return resp.ttl

    async def count(self, prefix: bytes) -> int:
        resp = await self.kv.range(pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0",
                                                   count_only=True))
        return resp.count


@pytest.fixture
async def clients(gateways: list[Server]) -> AsyncIterator[list[Client]]:
    made = [Client(server) for server in gateways]
    yield made
    for c in made:
        c.channel.close()


async def _keep_alive_for(client: Client, lease_id: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert await client.keepalive(lease_id) == TTL
        await asyncio.sleep(TTL / 3)  # the Go client's cadence: next keepalive at TTL/3


async def _until(predicate: Callable[[], Awaitable[bool]], within: float) -> float:
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < within, "condition not reached in time"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def _attach(clients: list[Client], prefix: bytes) -> int:
    grant = await clients[0].lease.lease_grant(pb.LeaseGrantRequest(ttl=TTL))
    for i, c in enumerate(clients):  # each gateway attaches one key
        await c.kv.put(pb.PutRequest(key=prefix + b"%d" % i, value=b"v", lease=grant.id))
    return grant.id


async def test_keepalives_anywhere_keep_a_lease_then_expiry_deletes_once(
        clients: list[Client]) -> None:
    lease_id = await _attach(clients, b"/l/a/")
    # Keepalives only through the third gateway, for three TTLs: whoever owns expiry must
    # honour them.
    await _keep_alive_for(clients[2], lease_id, 3 * TTL)
    for c in clients:
        assert await c.count(b"/l/a/") == 3
    stopped = time.monotonic()
    waited = await _until(lambda: _gone(clients[0], b"/l/a/"), within=TTL + 15)
    assert time.monotonic() - stopped >= TTL - 0.5, "expired before its TTL"
    assert waited < TTL + 15
    # One revision, three DELETEs, seen identically through every gateway.
    for c in clients:
        await _until(lambda c=c: _gone(c, b"/l/a/"), within=10)
        hist = await c.kv.range(pb.RangeRequest(key=b"/l/a/", range_end=b"/l/a0", revision=0))
        assert hist.count == 0
    ttl = await clients[1].lease.lease_time_to_live(pb.LeaseTimeToLiveRequest(id=lease_id))
    assert ttl.ttl == -1


async def _gone(client: Client, prefix: bytes) -> bool:
    return await client.count(prefix) == 0


async def test_killing_a_gateway_expires_nothing_early(gateways: list[Server],
                                                       clients: list[Client]) -> None:
    lease_id = await _attach(clients, b"/l/b/")
    gateways[0].process.send_signal(signal.SIGKILL)  # perhaps the owner; its claim must lapse
    gateways[0].process.wait(timeout=10)
    gateways[0].stopped = True
    # Through the takeover (an owner claim lasts 10 s), keep the lease alive via gateway 2.
    await _keep_alive_for(clients[1], lease_id, 14)
    assert await clients[2].count(b"/l/b/") == 3
    await _until(lambda: _gone(clients[2], b"/l/b/"), within=TTL + 20)
