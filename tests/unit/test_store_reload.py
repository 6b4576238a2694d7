"""A lost tail reloads in process (issue 9, item 3): the Store over an in-memory shared log.

``MemLog`` is one shared log; each ``MemShared`` is one gateway's SharedBackend on it (a
conditional commit on the whole position, a tail of every commit in order, physical compaction
that makes a tail which has not read the compacted revisions lose its place: TailLost, as the
Cosmos tail does). Hooks stop a gateway's tail (``paused``), make it lose its place at once
(``lose``), hold or fail its loads and hold its commits.

Two stores on one log play two gateways, A and B; B's watch hub is wired as the gateway wires
it. Waits are on conditions with deadlines (``until``), never on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from etcdgw import errors, follower
from etcdgw import store as store_module
from etcdgw._proto import etcdserverpb as pb
from etcdgw.backends.base import (
    BackendError,
    CommitConflict,
    Committed,
    LeaseChange,
    Loaded,
    LogPosition,
    Revision,
    TailLost,
)
from etcdgw.mvcc.hash import hash_kv
from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.replica import Version
from etcdgw.store import Store
from etcdgw.watch.hub import WatchHub, WatchStream

DEADLINE = 10.0
_ALL = KeyRange.of(b"\x00", b"\x00")


async def until(cond: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class MemLog:
    def __init__(self) -> None:
        self.rev = 1
        self.compact_rev = -1
        self.lseq = 0
        self.revisions: list[Revision] = []
        self.leases: dict[int, tuple[int, int]] = {}  # id -> (ttl, lease sequence of grant)
        self.entries: list[Committed] = []
        self.gone_below = 0  # revisions below it were compacted physically
        self.backends: list[MemShared] = []

    def changed(self) -> None:
        for b in self.backends:
            b.wake.set()


class MemShared:
    def __init__(self, log: MemLog) -> None:
        self.log = log
        log.backends.append(self)
        self.wake = asyncio.Event()
        self.paused = False
        self.lose = False
        self.loads = 0
        self.load_started = asyncio.Event()
        self.hold_load: asyncio.Event | None = None
        self.fail_loads = 0
        self.commits = 0
        self.hold_commit: asyncio.Event | None = None
        self.commit_started = asyncio.Event()
        self.inject: list[Committed] = []  # yielded by the tail before the log's entries
        self.explode = False  # the tail fails with an error that is not TailLost
        self._from = 0  # entries index the next tail starts at
        self._reader = False

    # -- Backend ---------------------------------------------------------------------------

    async def load(self) -> Loaded:
        self.loads += 1
        self.load_started.set()
        if self.hold_load is not None:
            await self.hold_load.wait()
        if self.fail_loads:
            self.fail_loads -= 1
            raise BackendError("injected: load failed")
        g = self.log
        self._from = len(g.entries)
        return Loaded(cluster_id=7, member_id=1, rev=g.rev, compact_rev=g.compact_rev,
                      revisions=iter(list(g.revisions)),
                      leases=[(i, ttl) for i, (ttl, _) in g.leases.items()],
                      lease_seq=g.lseq,
                      lease_granted={i: seq for i, (_, seq) in g.leases.items()})

    async def commit(self, expected_rev: int, revisions: list[Revision],
                     compact_rev: int | None, leases: Sequence[LeaseChange] = (), *,
                     expected_lease_seq: int = 0) -> None:
        self.commits += 1
        self.commit_started.set()
        if self.hold_commit is not None:
            await self.hold_commit.wait()
        g = self.log
        if (g.rev, g.lseq) != (expected_rev, expected_lease_seq):
            raise CommitConflict("moved on", LogPosition(g.rev, g.lseq))
        g.revisions += revisions
        if revisions:
            g.rev = revisions[-1][0]
        if leases:
            g.lseq += 1
            for lease_id, ttl in leases:
                if ttl is None:
                    g.leases.pop(lease_id, None)
                else:
                    g.leases[lease_id] = (ttl, g.lseq)
        if compact_rev is not None:
            g.compact_rev = compact_rev
        g.entries.append(Committed(g.rev, list(revisions), compact_rev, list(leases),
                                   g.lseq if leases else None))
        g.changed()

    async def compact(self, rev: int) -> None:
        self.log.gone_below = max(self.log.gone_below, rev)

    def size(self) -> tuple[int, int]:
        return 1024, 1024

    async def close(self) -> None:
        pass

    # -- SharedBackend ---------------------------------------------------------------------

    def tail(self, after_rev: int) -> AsyncIterator[Committed]:
        assert not self._reader, "one tail at a time"
        self._reader = True
        return self._tail(after_rev)

    async def _tail(self, after_rev: int) -> AsyncIterator[Committed]:
        try:
            i, delivered = self._from, after_rev
            while True:
                if self.lose:
                    self.lose = False
                    raise TailLost("injected: tail lost")
                if self.explode:
                    self.explode = False
                    raise RuntimeError("injected: a bug in the tail")
                while self.inject and not self.paused:
                    yield self.inject.pop(0)
                g = self.log
                while not self.paused and i < len(g.entries):
                    e = g.entries[i]
                    if e.revisions and delivered < e.revisions[0][0] < g.gone_below:
                        raise TailLost(f"revision {e.revisions[0][0]} was compacted away")
                    i += 1
                    delivered = max(delivered, e.rev)
                    yield e
                if self.lose or self.explode:
                    continue
                self.wake.clear()
                await self.wake.wait()
        finally:
            self._reader = False

    async def committed_position(self) -> LogPosition:
        return LogPosition(self.log.rev, self.log.lseq)

    def poke(self) -> None:
        self.wake.set()

    def stall(self) -> None:
        self.paused = True

    def go_on(self, *, lose: bool = False, explode: bool = False) -> None:
        self.paused = False
        self.lose = lose
        self.explode = explode
        self.wake.set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pair:
    """Gateways A and B on one MemLog; B has a watch hub wired as the gateway wires it."""

    def __init__(self, a: Store, b: Store, fb: MemShared, hub: WatchHub) -> None:
        self.a, self.b, self.fb, self.hub = a, b, fb, hub

    async def synced(self) -> None:
        await until(lambda: self.b.position == self.a.position, "B to catch up with A")

    async def reloaded(self, n: int = 1) -> None:
        f = self.b.follower
        assert f is not None
        await until(lambda: f.reloads >= n and not f.reloading, f"reload {n}")


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    log = MemLog()
    fa, fb = MemShared(log), MemShared(log)
    a = await Store.open(fa, member_name="a")
    b = await Store.open(fb, member_name="b")
    b.clock = Clock()
    hub = WatchHub(b.replica, b.header, fragment_limit=1 << 20, progress_interval=0)
    b.listeners.append(hub.on_apply)
    b.compaction_listeners.append(hub.on_compact)
    b.reload_listeners.append(hub.on_reload)
    yield Pair(a, b, fb, hub)
    await hub.close()
    await a.close()
    await b.close()


async def put(s: Store, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
    body = await s.put(pb.PutRequest(key=key, value=value, lease=lease))
    return int(pb.PutResponse.parse(body).header.revision)


async def compact(s: Store, rev: int) -> None:
    await s.compact(pb.CompactionRequest(revision=rev, physical=True))


def watch(s: WatchStream, key: bytes, end: bytes = b"", start: int = 0) -> int:
    s.create(key=key, range_end=end, start_revision=start, prev_kv=False, filters=(),
             progress_notify=False, fragment=False, watch_id=0)
    return max(s.watchers) if s.watchers else -1


async def responses(s: WatchStream, until_cond: Callable[[list[pb.WatchResponse]], bool],
                    got: list[pb.WatchResponse] | None = None) -> list[pb.WatchResponse]:
    got = [] if got is None else got
    async with asyncio.timeout(DEADLINE):
        while not until_cond(got):
            got.append(pb.WatchResponse.parse(await s.next_response()))
    return got


def events(got: list[pb.WatchResponse], watch_id: int) -> list[tuple[bytes, int]]:
    return [(e.kv.key, e.kv.mod_revision) for r in got if r.watch_id == watch_id
            for e in r.events]


def same_state(a: Store, b: Store) -> None:
    assert b.position == a.position
    assert (b.replica.rev, b.replica.compact_rev) == (a.replica.rev, a.replica.compact_rev)
    assert hash_kv(b.replica, b.replica.rev) == hash_kv(a.replica, a.replica.rev)
    assert [(k, [v.mod for v in a.replica.history(k).versions])  # type: ignore[union-attr]
            for k in a.replica.keys_in(_ALL)] == \
        [(k, [v.mod for v in b.replica.history(k).versions])  # type: ignore[union-attr]
         for k in b.replica.keys_in(_ALL)]
    assert [r for r, _ in b.replica.log] == [r for r, _ in a.replica.log]



# -- the reload ---------------------------------------------------------------------------------


async def test_compacted_past_the_tail_reloads_and_watchers_continue_or_are_cancelled(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """B's tail stops; A writes and compacts physically past what B read: B's tail is lost,
    B reloads in process and equals A. A watcher of B waiting for a compacted revision is
    cancelled with compact_revision; one waiting for a revision still retained gets every
    event from it exactly once, then live events; writes through B work."""
    a, b, fb, hub = pair.a, pair.b, pair.fb, pair.hub
    await put(a, b"/w/x")
    await pair.synced()
    s = hub.open_stream()
    lost = watch(s, b"/w/", b"/w0")  # synced: next revision b.rev + 1
    head = b.revision
    later = watch(s, b"/w/", b"/w0", start=head + 4)  # a future revision: stays synced
    got = await responses(s, lambda g: sum(r.created for r in g) == 2)
    fb.stall()
    revs = [await put(a, b"/w/x", b"%d" % i) for i in range(8)]  # head+1 .. head+8
    await compact(a, head + 3)  # physical: answered once done
    caplog.set_level(logging.WARNING, logger="etcdgw.follower")
    fb.go_on()
    await pair.reloaded()
    same_state(a, b)
    assert [r.message for r in caplog.records if "tail lost" in r.message] == [
        f"tail lost (revision {head + 1} was compacted away): reloading from revision {head}"]
    got = await responses(s, lambda g: len(events(g, later)) >= 5 and any(
        r.canceled for r in g), got)
    cancels = [r for r in got if r.canceled]
    assert [(r.watch_id, r.compact_revision) for r in cancels] == [(lost, head + 3)]
    assert events(got, later) == [(b"/w/x", r) for r in revs[3:]]
    assert events(got, lost) == []
    # Live again: a write through B reaches the watcher once.
    rev = await put(b, b"/w/y")
    assert rev == revs[-1] + 1
    got = await responses(s, lambda g: len(events(g, later)) >= 6, got)
    assert events(got, later)[5:] == [(b"/w/y", rev)]
    await pair.synced()
    same_state(a, b)


async def test_injected_tail_loss_keeps_every_synced_watcher(pair: Pair) -> None:
    """TailLost without compaction: every synced watcher catches up from its next revision
    without gap or duplicate (what the tail never delivered comes from the reloaded
    history), and one already catching up (from revision 1) too."""
    a, b, fb, hub = pair.a, pair.b, pair.fb, pair.hub
    first = await put(a, b"/k/0")
    await pair.synced()
    s = hub.open_stream()
    live = watch(s, b"/k/", b"/k0")
    one = watch(s, b"/k/0")
    fb.stall()
    revs = [await put(a, b"/k/%d" % (i % 3)) for i in range(10)]
    s2 = hub.open_stream()
    old = watch(s2, b"/k/", b"/k0", start=1)  # replays from the (stale) replica meanwhile
    fb.go_on(lose=True)
    await pair.reloaded()
    same_state(a, b)
    keys = [b"/k/%d" % (i % 3) for i in range(10)]
    got = await responses(s, lambda g: len(events(g, live)) >= 10 and len(events(g, one)) >= 4)
    assert events(got, live) == list(zip(keys, revs, strict=True))
    assert events(got, one) == [(k, r) for k, r in zip(keys, revs, strict=True) if k == b"/k/0"]
    got2 = await responses(s2, lambda g: len(events(g, old)) >= 11)
    assert events(got2, old) == [(b"/k/0", first), *zip(keys, revs, strict=True)]
    assert not any(r.canceled for r in got + got2)


async def test_leases_keep_their_deadlines(pair: Pair) -> None:
    """The lease table after a reload: a lease B knew keeps its deadline (also a keepalive's
    later one) and its keys; one granted meanwhile gets its full TTL from now; a revoked one
    is gone; one revoked and granted again with the same id is the new grant (full TTL)."""
    a, b, fb = pair.a, pair.b, pair.fb
    clock = b.clock
    assert isinstance(clock, Clock)
    for lease_id in (1, 3, 4):
        await a.lease_grant(lease_id, 60)
    await put(a, b"/l/1", lease=1)
    await pair.synced()
    clock.now += 10
    assert b.leases.renew(4, clock.now) == 60  # a keepalive through B: deadline 1070
    deadlines = {i: b.leases.get(i).deadline for i in (1, 3, 4)}  # type: ignore[union-attr]
    assert deadlines == {1: 1060.0, 3: 1060.0, 4: 1070.0}
    fb.stall()
    await a.lease_grant(2, 30)
    await a.lease_revoke(3)
    await a.lease_revoke(4)
    await a.lease_grant(4, 60)
    await put(a, b"/l/2", lease=2)
    await put(a, b"/l/4", lease=4)
    clock.now += 10
    fb.go_on(lose=True)
    await pair.reloaded()
    same_state(a, b)
    t = b.leases
    assert sorted(lease.id for lease in t) == [1, 2, 4]
    assert t.get(1).deadline == 1060.0  # type: ignore[union-attr]
    assert t.get(2).deadline == clock.now + 30  # type: ignore[union-attr]
    assert t.get(4).deadline == clock.now + 60  # type: ignore[union-attr]
    assert (t.keys(1), t.keys(2), t.keys(4)) == ([b"/l/1"], [b"/l/2"], [b"/l/4"])
    assert t.lease_of(b"/l/1") == 1
    # The table works on: a revoke through B deletes the key attached before the reload.
    await b.lease_revoke(1)
    await pair.synced()
    assert a.replica.get(b"/l/1") is None and 1 not in a.leases


async def test_writes_wait_for_the_reload_and_never_interleave(pair: Pair) -> None:
    """A commit in flight when the tail is lost finishes before the reload loads; a write
    arriving during the load waits for it and is evaluated on the reloaded replica."""
    a, b, fb = pair.a, pair.b, pair.fb
    await put(a, b"/i/a")
    await pair.synced()
    fb.hold_commit = asyncio.Event()
    fb.commit_started.clear()
    in_flight = asyncio.create_task(put(b, b"/i/b"))
    await fb.commit_started.wait()
    fb.lose = True
    fb.wake.set()
    f = b.follower
    assert f is not None
    await until(lambda: f.reloading, "the reload to start")
    for _ in range(50):  # let everything runnable run: the load must wait for the commit
        await asyncio.sleep(0)
    assert fb.loads == 1  # only the load at start
    fb.hold_load = asyncio.Event()
    fb.load_started.clear()
    fb.hold_commit.set()
    fb.hold_commit = None
    first = await in_flight
    await fb.load_started.wait()
    commits = fb.commits
    waiting = asyncio.create_task(put(b, b"/i/c"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not waiting.done() and fb.commits == commits  # not evaluated during the load
    await put(a, b"/i/d")  # another gateway writes meanwhile
    fb.hold_load.set()
    rev = await waiting
    assert rev == first + 2  # after A's write: evaluated on the reloaded replica
    await pair.reloaded()
    await pair.synced()
    same_state(a, b)
    assert fb.commits == commits + 1  # no conflict, no second evaluation


async def test_a_long_reload_answers_unavailable_and_a_failed_one_is_retried(
        pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Writes and linearizable reads during a reload that takes longer than the catch-up
    timeout fail UNAVAILABLE 'etcdserver: request timed out' (serializable reads are served);
    failed loads are retried with backoff, each failure logged, one 'tail lost' per reload."""
    monkeypatch.setattr(store_module, "CATCH_UP_TIMEOUT", 0.2)
    monkeypatch.setattr(follower, "RELOAD_BACKOFF", 0.01)
    a, b, fb = pair.a, pair.b, pair.fb
    await put(a, b"/u/a")
    await pair.synced()
    caplog.set_level(logging.WARNING, logger="etcdgw.follower")
    fb.hold_load = asyncio.Event()
    fb.load_started.clear()
    fb.fail_loads = 3
    fb.stall()
    await put(a, b"/u/b")
    fb.go_on(lose=True)
    await fb.load_started.wait()
    with pytest.raises(errors.EtcdError) as e:
        await put(b, b"/u/c")
    assert e.value is errors.TIMEOUT
    with pytest.raises(errors.EtcdError) as e:
        await b.range(pb.RangeRequest(key=b"/u/b"))
    assert e.value is errors.TIMEOUT
    body = await b.range(pb.RangeRequest(key=b"/u/a", serializable=True))
    assert [kv.key for kv in pb.RangeResponse.parse(body).kvs] == [b"/u/a"]
    fb.hold_load.set()
    await pair.reloaded()
    f = b.follower
    assert f is not None and f.reloads == 1 and f.reload_failures == 3
    warnings = [r.message for r in caplog.records]
    assert sum("tail lost" in m for m in warnings) == 1
    assert sum(m.startswith("reload failed (BackendError: injected") for m in warnings) == 3
    body = await b.range(pb.RangeRequest(key=b"/u/b"))
    assert [kv.key for kv in pb.RangeResponse.parse(body).kvs] == [b"/u/b"]
    await put(b, b"/u/c")
    await pair.synced()
    same_state(a, b)


@pytest.mark.parametrize("how", ["gap", "error"])
async def test_a_tail_that_fails_otherwise_reloads_too(pair: Pair, how: str) -> None:
    """An entry the store cannot apply (a revision gap: TailLost from the store itself) or
    an error of the tail that is not TailLost ends the tail the same way: a reload."""
    a, b, fb = pair.a, pair.b, pair.fb
    await put(a, b"/g/a")
    await pair.synced()
    fb.stall()
    await put(a, b"/g/b")
    await put(a, b"/g/c")
    if how == "gap":
        rev = b.revision + 2
        fb.inject.append(Committed(rev, [(rev, [Version(b"/g/z", rev, rev, 1, b"z", 0)])]))
    fb.go_on(explode=how == "error")
    await pair.reloaded()
    same_state(a, b)
    assert b.replica.get(b"/g/z") is None
    f = b.follower
    assert f is not None and f.reloads == 1
    await put(b, b"/g/d")
    await pair.synced()
    same_state(a, b)
