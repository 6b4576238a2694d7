"""Lease renewals across gateways on the Cosmos test server, through the real SDK (issue 9).

- Two gateways in-process (Store + LeaseManager over two CosmosBackends on one container): the
  keepalives reach a gateway whose wall clock is 30 s behind; the owner, deciding on its own
  clock only, keeps the lease alive and expires it once they stop, no earlier than TTL after
  the last one. Both stores' clocks are settable and the owner's expiry is run by the test.
- The renewal documents are sharded: 60,000 leases make no document over 1 MB, all of them
  read back with one query, and a flush writes only the documents whose leases changed (one
  upsert with few leases), counted at the SDK's transport.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from support.cosmos import drop_database, settings_for

from etcdgw._proto import etcdserverpb as pb

pytestmark = pytest.mark.timeout(120)

TTL = 10
STEP = 0.5  # the owner's check interval
LEASE = 0x5EED


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    backend: Any
    store: Any
    clock: Clock
    manager: Any


async def until(cond: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def settings(cosmos_endpoint: str) -> AsyncIterator[Any]:
    s = settings_for(cosmos_endpoint)
    yield s
    await drop_database(s)


async def test_keepalives_through_a_gateway_30s_behind(settings: Any) -> None:
    from etcdgw.backends.cosmos import CosmosBackend
    from etcdgw.lease.manager import LeaseManager
    from etcdgw.store import Store

    opened: list[Gateway] = []

    async def gateway(name: str, start: float, wall: Callable[[], float]) -> Gateway:
        backend = CosmosBackend(settings)
        store = await Store.open(backend, member_name=name)
        clock = Clock(start)
        store.clock = clock
        manager = LeaseManager(store, shared=backend, check_interval=3600, wall=wall)
        manager.start()
        gw = Gateway(backend, store, clock, manager)
        opened.append(gw)
        return gw

    try:
        a = await gateway("owner", 1000.0, time.time)
        await until(lambda: a.manager.owner)
        b = await gateway("behind", 50.0, lambda: time.time() - 30)
        await a.manager.grant(LEASE, TTL)
        await a.store.put(pb.PutRequest(key=b"/skew/k", value=b"v", lease=LEASE))
        elapsed, last = 0.0, 0.0
        while elapsed < 4 * TTL:  # keepalives through b every ~TTL/3, the owner checks
            if elapsed == 0 or elapsed - last >= TTL / 3:
                assert await b.manager.keepalive(LEASE) == TTL
                last = elapsed
            assert await a.manager.expire_once() == 0
            assert LEASE in a.store.leases, f"expired at {elapsed} s while kept alive"
            for gw in opened:
                gw.clock.now += STEP
            elapsed += STEP
        assert not b.manager.owner
        while await a.manager.expire_once() == 0:  # keepalives stopped
            for gw in opened:
                gw.clock.now += STEP
            elapsed += STEP
            assert elapsed - last <= 2 * TTL + STEP, "not expired (at most one TTL late)"
        assert elapsed - last >= TTL, "expired earlier than TTL after the last keepalive"
        assert LEASE not in a.store.leases
        assert (await b.manager.time_to_live(LEASE, keys=False)).ttl == -1  # b sees it too
        r = pb.RangeResponse.parse(await b.store.range(pb.RangeRequest(key=b"/skew/k")))
        assert r.count == 0
    finally:
        for gw in opened:
            await gw.manager.close()
            await gw.store.close()
            await gw.backend.close()


def _writes(sent: list[str]) -> list[str]:
    return [s for s in sent if s == "POST /" or s.startswith(("PUT ", "DELETE "))]


async def test_renewal_documents_are_sharded(settings: Any) -> None:
    from support.cosmos_faults import FaultTransport

    from etcdgw.backends.cosmos import CosmosBackend

    t = FaultTransport()
    backend = CosmosBackend(settings, transport=t)
    other = CosmosBackend(settings)
    rng = random.Random(9)
    try:
        await backend.load()
        member = 4242
        renewals = {rng.getrandbits(63) | 1: rng.randrange(1, 10**6) for _ in range(60_000)}
        n = len(t.sent)
        await backend.save_renewals(member, renewals, set(renewals))
        assert len(_writes(t.sent[n:])) == 32  # 32 documents of ~1,900 leases
        docs = await backend.c.query("SELECT * FROM c WHERE c.pk = @pk AND c.type = 'renew'")
        assert len(docs) == 32
        sizes = [len(json.dumps(d)) for d in docs]
        assert max(sizes) < 1_000_000, max(sizes)
        assert max(sizes) < 100_000  # in fact: far under Cosmos's 2 MB
        # Read back (one query) by another gateway: every lease, its counter.
        n = len(t.sent)
        got = await backend.load_renewals()
        assert t.sent[n:] == ["QUERY"]
        assert got == {(member, i): c for i, c in renewals.items()}
        assert await other.load_renewals() == got
        # A second flush with three leases renewed: only their documents are written.
        some = rng.sample(sorted(renewals), 3)
        for i in some:
            renewals[i] += 1
        n = len(t.sent)
        await backend.save_renewals(member, renewals, set(some))
        changed_docs = {bucket for bucket in range(32)
                        if any(d["bucket"] == bucket and str(i) in d["leases"]
                               for d in docs for i in some)}
        assert _writes(t.sent[n:]) == ["POST /"] * len(changed_docs)
        assert (await other.load_renewals())[(member, some[0])] == renewals[some[0]]
        # Most leases gone: one document again, the others deleted (after it is written).
        kept = dict(list(renewals.items())[:100])
        gone = set(renewals) - set(kept)
        n = len(t.sent)
        await backend.save_renewals(member, kept, gone)
        assert _writes(t.sent[n:])[0] == "POST /"
        assert len(_writes(t.sent[n:])) == 1 + 31
        assert await other.load_renewals() == {(member, i): c for i, c in kept.items()}
        # Few leases: one upsert per flush.
        for i in list(kept)[:5]:
            kept[i] += 1
            n = len(t.sent)
            await backend.save_renewals(member, kept, {i})
            assert t.sent[n:] == ["POST /"]
    finally:
        await backend.close()
        await other.close()


async def test_a_restarted_gateway_removes_its_earlier_documents(settings: Any) -> None:
    """The first flush of a process finds the documents an earlier one of the same gateway
    left (here 16 of them, and the unsharded form of earlier releases) and keeps only its
    layout; other gateways' documents are left alone."""
    from etcdgw.backends.cosmos import CosmosBackend
    from etcdgw.backends.cosmos.model import PK

    first, second, other = (CosmosBackend(settings) for _ in range(3))
    try:
        await first.load()
        renewals = {i: 3 for i in range(1, 20_001)}
        await first.save_renewals(1, renewals, set(renewals))
        await first.c.upsert({"id": "renew-1", "pk": PK, "type": "renew", "member_id": "1",
                              "leases": {"5": 1712345678.25}})
        await other.save_renewals(2, {9: 1}, {9})
        kept = {i: 4 for i in range(1, 11)}
        await second.save_renewals(1, kept, set(kept))
        ids = sorted(d["id"] for d in await second.c.query(
            "SELECT c.id FROM c WHERE c.pk = @pk AND c.type = 'renew'"))
        assert ids == ["renew-1-0", "renew-2-0"]
        assert await other.load_renewals() == {**{(1, i): 4 for i in kept}, (2, 9): 1}
    finally:
        for b in (first, second, other):
            await b.close()
