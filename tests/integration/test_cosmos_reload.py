"""A gateway whose tail of the Cosmos change feed is lost reloads in process (issue 9, item 3).

Two gateways in this process, A and B, on one container of the Cosmos test server; B's Cosmos
requests go through a fault transport. B's change-feed reads fail (503) while A writes and
compacts physically past what B's tail has read: the rev documents B never read are gone, so
B's tail raises TailLost once the feed answers again. Before the fix B then answered every
linearizable read and write UNAVAILABLE until restarted. Now B reloads from Cosmos without a
restart: its HashKV equals A's, a watcher of B waiting for a compacted revision is cancelled
with compact_revision, one waiting for a retained revision gets every event from it exactly
once and then live ones, a lease B knew keeps its deadline, and writes through B work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from support.cosmos import account_key, drop_database_now, new_database
from support.cosmos_faults import FaultTransport, is_feed
from support.driver import Failure, GrpcDriver
from support.lease import LeaseClient
from support.watch import WatchClient

import etcdgw.gateway
from etcdgw import Config
from etcdgw._proto import etcdserverpb as pb
from etcdgw.gateway import Gateway

pytestmark = pytest.mark.timeout(120)

DEADLINE = 30.0


async def until(condition: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def ok(outcome: Any) -> Any:
    assert not isinstance(outcome, Failure), outcome
    return outcome


class Two:
    def __init__(self, a: Gateway, b: Gateway, faults: FaultTransport) -> None:
        self.a, self.b, self.faults = a, b, faults
        self.kv_a = GrpcDriver(Channel(*a.address), name="a")
        self.kv_b = GrpcDriver(Channel(*b.address), name="b")

    async def close(self) -> None:
        await self.kv_a.close()
        await self.kv_b.close()

    async def b_caught_up(self) -> None:
        await until(lambda: self.b.store.position == self.a.store.position,
                    "B's replica to reach A's position")


@pytest.fixture
async def two(cosmos_endpoint: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Two]:
    from etcdgw.backends.cosmos import CosmosBackend

    faults = FaultTransport()

    async def open_backend(kind: str, data_dir: str, *, cosmos: Any = None) -> Any:
        assert kind == "cosmos"
        settings = cosmos.replace(poll_interval=0.02, max_retries=1)
        faulty = Path(data_dir).name == "b"
        return CosmosBackend(settings, transport=faults if faulty else None)

    monkeypatch.setattr(etcdgw.gateway, "open_backend", open_backend)
    database = new_database()

    def config(name: str) -> Config:
        return Config(name=name, listen_client_urls=("http://127.0.0.1:0",),
                      data_dir=str(tmp_path / name), backend="cosmos",
                      cosmos_endpoint=cosmos_endpoint, cosmos_key=account_key(),
                      cosmos_database=database, cosmos_container="etcd")

    try:
        async with Gateway(config("a")) as a, Gateway(config("b")) as b:
            pair = Two(a, b, faults)
            try:
                yield pair
            finally:
                await pair.close()
    finally:
        await asyncio.to_thread(drop_database_now, cosmos_endpoint, database)


async def hash_kv(gw: Gateway) -> tuple[int, int, int]:
    channel = Channel(*gw.address)
    try:
        r = await pb.MaintenanceStub(channel).hash_kv(pb.HashKvRequest(revision=0), timeout=10)
        return r.header.revision, r.compact_revision, r.hash
    finally:
        channel.close()


async def test_lost_tail_reloads_in_process(two: Two) -> None:
    a, b, kv_a, kv_b = two.a, two.b, two.kv_a, two.kv_b
    channel_a = Channel(*a.address)
    leases = LeaseClient(channel_a)
    watches = WatchClient(Channel(*b.address), owns_channel=True)
    try:
        lease = (await leases.grant(60)).id
        ok(await kv_a.put(pb.PutRequest(key=b"/r/leased", value=b"l", lease=lease)))
        ok(await kv_a.put(pb.PutRequest(key=b"/w/x", value=b"0")))
        await two.b_caught_up()
        deadline = b.store.leases.get(lease).deadline  # type: ignore[union-attr]
        head = b.store.revision
        await watches.open()
        lost = (await watches.watch(b"/w/", b"/w0")).watch_id  # synced: next is head + 1
        later = (await watches.watch(b"/w/", b"/w0", start_revision=head + 4)).watch_id

        feed_outage = two.faults.status(is_feed, 503, times=10**9)
        await until(lambda: feed_outage.hits >= 1, "B's tail to fail reading the feed")
        revs = []
        for i in range(8):  # head+1 .. head+8, each superseding the one before
            put = ok(await kv_a.put(pb.PutRequest(key=b"/w/x", value=b"%d" % (i + 1))))
            revs.append(put.header.revision)
        assert revs == list(range(head + 1, head + 9))
        ok(await kv_a.compact(pb.CompactionRequest(revision=head + 3, physical=True)))
        assert b.store.revision == head  # B saw none of it
        # Writes through B cannot be decided while its replica trails (the tail reads nothing).
        two.faults.faults.clear()  # the feed answers again: the tail finds head+1 gone
        follower = b.store.follower
        assert follower is not None
        await until(lambda: follower.reloads == 1 and not follower.reloading, "B's reload")
        await two.b_caught_up()
        assert await hash_kv(b) == await hash_kv(a)
        assert b.store.leases.get(lease).deadline == deadline  # type: ignore[union-attr]
        assert "etcdgw_store_reloads_total 1" in b.metrics.render()

        cancelled: list[pb.WatchResponse] = []
        seen: list[tuple[bytes, int]] = []
        async with asyncio.timeout(DEADLINE):
            while not cancelled or len(seen) < 5:
                r = await watches.recv()
                if r.canceled:
                    cancelled.append(r)
                elif r.watch_id == later:
                    seen += [(e.kv.key, e.kv.mod_revision) for e in r.events]
                else:
                    assert not r.events, f"events for watcher {r.watch_id}: {r}"
        assert [(r.watch_id, r.compact_revision) for r in cancelled] == [(lost, head + 3)]
        assert seen == [(b"/w/x", rev) for rev in revs[3:]]

        # B serves again: a write through it, seen by A and by the watcher, once.
        put = ok(await kv_b.put(pb.PutRequest(key=b"/w/y", value=b"b")))
        assert put.header.revision == revs[-1] + 1
        events = await watches.events(1, later)
        assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(b"/w/y", revs[-1] + 1)]
        got = ok(await kv_a.range(pb.RangeRequest(key=b"/w/", range_end=b"/w0")))
        assert [(kv.key, kv.mod_revision) for kv in got.kvs] == [
            (b"/w/x", revs[-1]), (b"/w/y", revs[-1] + 1)]
        got = ok(await kv_b.range(pb.RangeRequest(key=b"/r/leased")))
        assert [kv.lease for kv in got.kvs] == [lease]
        await two.b_caught_up()
        assert await hash_kv(b) == await hash_kv(a)
        assert follower.reloads == 1
    finally:
        await watches.close()
        channel_a.close()
