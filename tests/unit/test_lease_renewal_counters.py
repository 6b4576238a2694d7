"""Expiry across gateways decided on the owner's own clock (issue 9, contract L15/L16).

Two LeaseManagers, each over its own embedded store (the same lease granted in both), share an
in-memory stand-in for the Cosmos renewal and owner documents. The owner ``a`` expires; ``b``
answers the keepalives, its wall clock an hour off. Both stores' clocks are settable: time is
moved by the test, and ``a``'s expiry is run by the test (``expire_once``), so nothing waits on
timers except the keepalive flush (real, ~50 ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdgw.backends.embedded import EmbeddedBackend
from etcdgw.lease.manager import LeaseManager
from etcdgw.store import Store

TTL = 10
STEP = 0.5  # the owner's check interval
LEASE = 0x1234


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeShared:
    """The SharedLeases of a shared log in memory: each gateway's counters as it last saved
    them (what it wrote is what the owner reads, whatever it is), and one owner."""

    def __init__(self) -> None:
        self.saved: dict[int, dict[int, int]] = {}
        self.owner: int | None = None
        self.loads = 0

    async def claim_lease_owner(self, member_id: int, ttl: float, now: float) -> bool:
        if self.owner is None:
            self.owner = member_id
        return self.owner == member_id

    async def save_renewals(self, member_id: int, renewals: dict[int, int],
                            changed: set[int]) -> None:
        self.saved[member_id] = dict(renewals)

    async def load_renewals(self) -> dict[tuple[int, int], int]:
        self.loads += 1
        return {(m, i): n for m, saved in self.saved.items() for i, n in saved.items()}


@dataclass
class Gateway:
    store: Store
    clock: Clock
    manager: LeaseManager


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class Pair:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.shared = FakeShared()
        self.gateways: list[Gateway] = []

    async def gateway(self, name: str, start: float, wall: Callable[[], float],
                      data: str | None = None) -> Gateway:
        store = await Store.open(EmbeddedBackend(str(self.tmp / (data or name))))
        clock = Clock(start)
        store.clock = clock
        if LEASE not in store.leases:
            await store.lease_grant(LEASE, TTL)
        manager = LeaseManager(store, shared=self.shared, check_interval=3600, wall=wall)
        manager.start()
        gw = Gateway(store, clock, manager)
        self.gateways.append(gw)
        return gw

    async def close(self, gw: Gateway) -> None:
        await gw.manager.close()
        await gw.store.close()
        await gw.store._backend.close()  # type: ignore[attr-defined]
        self.gateways.remove(gw)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    p = Pair(tmp_path)
    yield p
    for gw in list(p.gateways):
        await p.close(gw)


def advance(gateways: list[Gateway], seconds: float) -> None:
    for gw in gateways:
        gw.clock.now += seconds


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_kept_alive_through_a_skewed_gateway_then_expires(pair: Pair, skew: float) -> None:
    # The owner's clock and b's clock are unrelated monotonic scales; b's wall is an hour off.
    a = await pair.gateway("a", start=5000.0, wall=time.time)
    await until(lambda: a.manager.owner)
    b = await pair.gateway("b", start=123.0, wall=lambda: time.time() + skew)
    both = [a, b]
    elapsed = 0.0
    last_keepalive = 0.0
    # Keepalives through b only, every TTL/3 (the Go client's cadence), for 5 TTLs; the owner
    # checks every STEP and must never expire the lease.
    while elapsed < 5 * TTL:
        if elapsed - last_keepalive >= TTL / 3 or elapsed == 0:
            assert await b.manager.keepalive(LEASE) == TTL
            last_keepalive = elapsed
        assert await a.manager.expire_once() == 0
        assert LEASE in a.store.leases, f"expired at {elapsed} s while kept alive"
        advance(both, STEP)
        elapsed += STEP
    assert pair.shared.loads >= 4  # the owner did look (at each deadline), and extended
    # Keepalives stop: expired no earlier than TTL after the last one and at most one TTL late
    # (a keepalive counts from when the owner first reads it, at the lease's deadline here).
    while LEASE in a.store.leases:
        await a.manager.expire_once()
        if LEASE not in a.store.leases:
            break
        advance(both, STEP)
        elapsed += STEP
        assert elapsed - last_keepalive <= 2 * TTL + STEP, "not expired"
    assert elapsed - last_keepalive >= TTL


async def test_a_new_owner_counts_what_it_first_reads_as_renewed_now(pair: Pair) -> None:
    """The owner changes while b renews: the new owner has no earlier read, so a counter it
    first reads counts as a keepalive at that read (here: one answered after the takeover,
    which the takeover's full TTL alone would not cover)."""
    a = await pair.gateway("a", start=100.0, wall=time.time)
    await until(lambda: a.manager.owner)
    b = await pair.gateway("b", start=100.0, wall=time.time)
    c = await pair.gateway("c", start=100.0, wall=time.time)
    everyone = [a, b, c]
    assert await b.manager.keepalive(LEASE) == TTL
    pair.shared.owner = c.store.member_id  # a's claim lapsed, c took it
    await until(lambda: c.manager.owner, within=10)  # (c claims every OWNER_RENEW seconds)
    advance(everyone, TTL - 2)  # the takeover's full TTL (from 100) nearly gone
    assert await b.manager.keepalive(LEASE) == TTL  # b: good until 118 + TTL
    advance(everyone, 2)
    assert await c.manager.expire_once() == 0  # due: its first read shows b's counter
    assert LEASE in c.store.leases
    advance(everyone, TTL - STEP)
    assert await c.manager.expire_once() == 0
    advance(everyone, STEP)
    assert await c.manager.expire_once() == 1  # no change since: expired, TTL after the read


async def test_a_restarted_gateway_continues_its_counters(pair: Pair) -> None:
    """Counting from 0 again after a restart would write a value the owner already read (1,
    then 1 again) and hide a keepalive; the restarted gateway goes on from what it wrote."""
    a = await pair.gateway("a", start=100.0, wall=time.time)
    await until(lambda: a.manager.owner)
    b = await pair.gateway("b", start=100.0, wall=time.time)
    member = b.store.member_id
    assert await b.manager.keepalive(LEASE) == TTL
    assert pair.shared.saved[member] == {LEASE: 1}
    advance([a, b], TTL)
    assert await a.manager.expire_once() == 0  # read 1 (new to it): good until 120 now
    await pair.close(b)
    advance([a], 5)
    b2 = await pair.gateway("b2", start=115.0, wall=time.time, data="b")
    assert b2.store.member_id == member
    assert await b2.manager.keepalive(LEASE) == TTL  # good until 125
    assert pair.shared.saved[member] == {LEASE: 2}
    advance([a, b2], 5)
    assert await a.manager.expire_once() == 0  # the restarted gateway's keepalive counts
    assert LEASE in a.store.leases
    advance([a, b2], TTL)
    assert await a.manager.expire_once() == 1
