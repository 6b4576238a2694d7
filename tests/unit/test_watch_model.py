"""The watch hub against a plain model (hypothesis RuleBasedStateMachine), in-process.

System under test: a Replica and a WatchHub wired the way etcdgw/store.py wires them: each
revision is applied to the replica and then handed to ``hub.on_apply``; a compaction runs
``replica.compact`` then ``hub.on_compact``. Streams are ``hub.open_stream()``; their queues are
drained through ``WatchStream.next_response`` (the server's send loop), decoded with betterproto2.
All of it runs on one private event loop, so the catch-up tasks run whenever a rule drains.

The model (written from contract section 10, M12, W17, G04) keeps the key state per revision and
every event ever produced; for each watcher it computes the exact event sequence it must see:
every event in its range with revision >= its start, filtered, with prev_kv, in order (G04/W15).
Checked on every response: created responses in request order with the model's ids (W05-W07,
W12, W13), events equal to the model's next ones (no gap, duplicate or reordering), live
responses at their revision (W16), cancels (W19) and compaction cancels only for watchers that
could be behind the compaction point (W08); progress responses only when the model says every
watcher is caught up, and after every event at or below their revision (W22, W23). After each
full drain every open watcher has received everything up to the current revision.

Slow consumers: the test runs again with HIGH_WATER_RESPONSES/LOW_WATER_RESPONSES/
CATCH_UP_REVISIONS monkeypatched tiny, so live watchers keep falling into catch-up between
drains (and partial drains read a few responses at a time) and must still get everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from etcdgw._proto import etcdserverpb as pb
from etcdgw.mvcc.keys import KeyRange, prefix_end
from etcdgw.mvcc.replica import Replica, Version
from etcdgw.watch import hub as hub_module
from etcdgw.watch.hub import WatchHub, WatchStream
from etcdgw.wire import f_int

KEYS = [b"a", b"ab", b"b", b"ba", b"c", b"\x00", b"\xff"]
VALUES = [b"", b"x", b"yy"]
RANGES: list[tuple[bytes, bytes]] = [
    (b"a", b""),  # single keys
    (b"b", b""),
    (b"\x00", b""),
    (b"a", prefix_end(b"a")),  # prefixes
    (b"b", prefix_end(b"b")),
    (b"b", b"\x00"),  # from-key
    (b"\x00", b"\x00"),  # everything
    (b"", b"\x00"),  # empty key = "\x00" (K01)
    (b"ab", b"c"),
    (b"c", b"b"),  # empty range (W13)
    (b"b", b"b"),
]
NOPUT, NODELETE = 0, 1
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
EMPTY = "mvcc: watcher range is empty"
DUPLICATE = "mvcc: duplicate watch ID provided on the WatchStream"

KV = tuple[bytes, int, int, int, bytes, int]  # key, create, mod, version, value, lease
Ev = tuple[int, KV, KV | None]  # type, kv, prev_kv


def header(rev: int) -> bytes:
    return f_int(3, rev)


@dataclass(eq=False)
class MWatcher:
    """The model of one watcher."""

    stream: int
    id: int
    kr: KeyRange
    first: int  # lowest revision it must see
    start_rev: int  # as requested
    prev_kv: bool
    noput: bool
    nodelete: bool
    created_rev: int
    received: list[Ev] = field(default_factory=list)
    last_rev: int = 0  # revision of the last event received
    state: str = "open"  # open / canceling / canceled / compacted
    settled: bool = False  # a full drain saw it synced, and nothing was written since


@dataclass
class MCreate:
    """A create whose created response has not been read yet."""

    watcher: MWatcher | None  # None: refused (watch_id -1)
    reason: str = ""


class WatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.replica = Replica()
        self.hub = WatchHub(self.replica, header, fragment_limit=1 << 30, progress_interval=0)
        self.streams: list[WatchStream] = []
        # model
        self.state: dict[bytes, KV] = {}  # live keys
        self.events: list[tuple[int, list[Ev]]] = []  # (rev, events) per revision
        self.compact_rev = -1
        self.compactions: list[int] = []
        self.open: list[dict[int, MWatcher]] = []  # per stream: ids the server holds
        self.pending: list[list[MCreate]] = []  # per stream: created responses to come
        self.next_id: list[int] = []
        self.client_ids: list[bool] = []  # per stream: client-chosen ids ever used
        self.by_id: list[dict[int, MWatcher]] = []  # per stream: id -> watcher of its responses
        self.progress_expected: list[int] = []  # per stream: progress responses due
        self.max_event_rev: list[int] = []  # per stream: highest event revision read
        self.run(self._open())
        self.run(self._open())

    def teardown(self) -> None:
        try:
            self.full_drain()
        finally:
            self.run(self.hub.close())
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """A synchronous hub call, made inside the loop (it may start tasks)."""

        async def go() -> Any:
            return fn(*args, **kw)

        return self.run(go())

    async def _open(self) -> None:
        self.streams.append(self.hub.open_stream())
        self.open.append({})
        self.pending.append([])
        self.next_id.append(0)
        self.client_ids.append(False)
        self.by_id.append({})
        self.progress_expected.append(0)
        self.max_event_rev.append(0)

    @property
    def cur(self) -> int:
        return self.replica.rev

    # -- writes -------------------------------------------------------------------------------

    def _unsettle(self) -> None:
        for ws in self.open:
            for mw in ws.values():
                mw.settled = False

    @rule(ops=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([*VALUES, None])),
                       min_size=1, max_size=4, unique_by=lambda t: t[0]))
    def write(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        """One revision changing 1..4 distinct keys (a Put, a Delete or a Txn), in op order."""
        rev = self.cur + 1
        changes: list[Version] = []
        evs: list[Ev] = []
        for key, value in ops:
            prev = self.state.get(key)
            if value is None:
                if prev is None:
                    continue  # deleting nothing changes nothing
                changes.append(Version.tombstone(key, rev))
                evs.append((1, (key, 0, rev, 0, b"", 0), prev))
                del self.state[key]
            else:
                create = prev[1] if prev else rev
                version = prev[3] + 1 if prev else 1
                kv = (key, create, rev, version, value, 0)
                changes.append(Version(key, rev, create, version, value, 0))
                evs.append((0, kv, prev))
                self.state[key] = kv
        if not changes:
            return
        self.events.append((rev, evs))
        self.replica.apply(rev, changes)
        self.call(self.hub.on_apply, rev, changes)
        self._unsettle()

    @precondition(lambda self: self.cur > max(self.compact_rev, 1))
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(max(self.compact_rev + 1, 1), self.cur), label="compact")
        settled = {mw for ws in self.open for mw in ws.values() if mw.settled}
        self.replica.compact(rev)
        self.call(self.hub.on_compact, rev)
        self.compact_rev = rev
        self.compactions.append(rev)
        self.settled_at_compaction[rev] = settled

    settled_at_compaction: dict[int, set[MWatcher]]  # compaction -> watchers settled then

    # -- watch requests -----------------------------------------------------------------------

    @rule(s=st.integers(0, 1), rng=st.sampled_from(RANGES),
          start=st.sampled_from(["zero", "past", "cur", "next", "future", "negative"]),
          data=st.data(), prev_kv=st.booleans(),
          filters=st.sampled_from([(), (NOPUT,), (NODELETE,), (NOPUT, NODELETE)]),
          client_id=st.sampled_from([None, None, None, 1, 2, 5]))
    def create(self, s: int, rng: tuple[bytes, bytes], start: str, data: st.DataObject,
               prev_kv: bool, filters: tuple[int, ...], client_id: int | None) -> None:
        if client_id is not None or self.client_ids[s]:
            # Make the model's view of the ids in use exact: a compaction may free a
            # client-chosen id above the counter before the model reads its cancel.
            self.full_drain()
        cur = self.cur
        if start == "past":
            start_rev = data.draw(st.integers(1, cur), label="past")
        elif start == "future":
            start_rev = cur + data.draw(st.integers(2, 4), label="future")
        elif start == "negative":
            start_rev = -data.draw(st.integers(1, 3), label="negative")
        else:
            start_rev = {"zero": 0, "cur": cur, "next": cur + 1}[start]
        key, end = rng
        kr = KeyRange.of(key or b"\x00", end)
        self.call(self.streams[s].create, key=key, range_end=end, start_revision=start_rev,
                  prev_kv=prev_kv, filters=filters, progress_notify=False, fragment=False,
                  watch_id=client_id or 0)
        if start_rev < 0:
            self.pending[s].append(MCreate(None, COMPACTED))
            return
        if kr.empty:
            self.pending[s].append(MCreate(None, EMPTY))
            return
        if client_id is not None:
            self.client_ids[s] = True
            if client_id in self.open[s]:
                self.pending[s].append(MCreate(None, DUPLICATE))
                return
            wid = client_id
            mw = MWatcher(s, wid, kr, start_rev or cur + 1, start_rev, prev_kv,
                          NOPUT in filters, NODELETE in filters, cur)
            self.open[s][wid] = mw
            self.pending[s].append(MCreate(mw))
            self.full_drain()  # again: its replay may cancel it at once (W08)
            return
        else:
            while self.next_id[s] in self.open[s]:
                self.next_id[s] += 1
            wid = self.next_id[s]
            self.next_id[s] += 1
        first = cur + 1 if start_rev == 0 else start_rev
        mw = MWatcher(s, wid, kr, first, start_rev, prev_kv, NOPUT in filters,
                      NODELETE in filters, cur)
        self.open[s][wid] = mw
        self.pending[s].append(MCreate(mw))

    @rule(s=st.integers(0, 1), data=st.data())
    def cancel(self, s: int, data: st.DataObject) -> None:
        ids = sorted(self.open[s])
        wid = data.draw(st.sampled_from([*ids, 777]), label="cancel id")
        self.call(self.streams[s].cancel, wid)
        mw = self.open[s].pop(wid, None)
        if mw is not None:
            mw.state = "canceling"
            mw.cancel_rev = self.cur  # type: ignore[attr-defined]

    @rule(s=st.integers(0, 1))
    def progress(self, s: int) -> None:
        before = len(self.streams[s]._out)
        self.call(self.streams[s].progress)
        sent = len(self.streams[s]._out) > before
        ws = self.open[s]
        if not ws:
            assert not sent, "W22: a stream without watchers gets no progress response"
            return
        if any(mw.start_rev > self.cur for mw in ws.values()):
            assert not sent, "W22: a watcher waits for a future revision"
        if all(mw.settled and mw.start_rev <= self.cur for mw in ws.values()):
            assert sent, "W22: every watcher is caught up, a progress response is due"

    # -- reading ------------------------------------------------------------------------------

    @rule(s=st.integers(0, 1), n=st.integers(1, 5))
    def read_some(self, s: int, n: int) -> None:
        """A slow consumer: read a few responses, let the catch-up task run a step."""
        stream = self.streams[s]
        for _ in range(n):
            if not stream._out:
                break
            self._check(s, pb.WatchResponse.parse(self.run(stream.next_response())))
        self.run(asyncio.sleep(0))

    @rule()
    def drain(self) -> None:
        self.full_drain()

    def full_drain(self) -> None:
        for _ in range(100_000):
            busy = False
            for s, stream in enumerate(self.streams):
                while stream._out:
                    busy = True
                    self._check(s, pb.WatchResponse.parse(self.run(stream.next_response())))
            self.run(asyncio.sleep(0))
            behind = any(not w.synced for st_ in self.streams for w in st_.watchers.values())
            if not busy and not behind and not any(st_._out for st_ in self.streams):
                break
        else:
            raise AssertionError("the hub never settled")
        for s in range(len(self.streams)):
            assert not self.pending[s], "created responses missing (W06)"
            assert set(self.open[s]) == set(self.streams[s].watchers), "watcher sets differ"
            for mw in self.open[s].values():
                want = self.expected(mw, self.cur)
                assert mw.received == want, f"G04: watcher {mw.id} on stream {s}"
                mw.settled = True

    # -- the model's expectations -------------------------------------------------------------

    def expected(self, mw: MWatcher, upto: int) -> list[Ev]:
        out: list[Ev] = []
        for rev, evs in self.events:
            if rev < mw.first or rev > upto:
                continue
            for typ, kv, prev in evs:
                if kv[0] not in mw.kr or (mw.noput if typ == 0 else mw.nodelete):
                    continue
                out.append((typ, kv, prev if mw.prev_kv else None))
        return out

    def _check(self, s: int, r: pb.WatchResponse) -> None:
        hrev = r.header.revision if r.header is not None else 0
        if r.created:
            assert self.pending[s], f"W06: unexpected created response {r}"
            pc = self.pending[s].pop(0)
            assert not r.events and r.compact_revision == 0
            if pc.watcher is None:
                assert (r.watch_id, r.canceled, r.cancel_reason) == (-1, True, pc.reason)
                return
            mw = pc.watcher
            assert not r.canceled and hrev == mw.created_rev
            assert r.watch_id == mw.id, "W05/W07: created response out of order or bad id"
            self.by_id[s][mw.id] = mw
            return
        if r.watch_id == -1:
            # W22/W23: a progress response: every watcher has every event <= its revision.
            assert not r.events and not r.canceled and r.compact_revision == 0 and hrev >= 1
            # ... and never behind an event already sent on the stream (bookmarks only advance).
            assert hrev >= self.max_event_rev[s], "progress behind an event already sent"
            for mw in self.by_id[s].values():
                if mw.state == "open":
                    assert mw.received == self.expected(mw, hrev), f"W23: watcher {mw.id}"
            return
        mw = self.by_id[s].get(r.watch_id)
        assert mw is not None and mw.state in ("open", "canceling"), f"response for {r.watch_id}"
        if r.canceled:
            assert not r.events
            want = self.expected(mw, self.cur)
            assert mw.received == want[: len(mw.received)], "G04: gap before the cancel"
            if r.compact_revision:
                assert r.compact_revision in self.compactions and hrev == 0  # W08, H11
                assert mw.last_rev < r.compact_revision, "W08: canceled a watcher past it"
                assert mw.first < r.compact_revision
                safe = self.settled_at_compaction.get(r.compact_revision, set())
                assert mw not in safe, "W08: a caught-up watcher was compacted"
                self.open[s].pop(mw.id, None)
                mw.state = "compacted"
            else:
                assert mw.state == "canceling", "W20: a server cancel without a reason"
                mw.state = "canceled"
            del self.by_id[s][mw.id]
            return
        assert mw.state in ("open", "canceling")
        assert r.events, "W18: a response without events"
        got = [_ev(e) for e in r.events]
        revs = [e[1][2] for e in got]
        assert hrev >= revs[-1], "W16"
        want = self.expected(mw, self.cur)
        n = len(mw.received)
        for g, w_ in zip(got, want[n:n + len(got)], strict=False):
            if g != w_ and g[2] is None and w_[2] is not None and g[1][2] <= self.compact_rev:
                w_ = (w_[0], w_[1], None)  # W17: prev_kv compacted away
            assert g == w_, f"G04: watcher {mw.id} got {g}, want {w_}"
        assert len(want) >= n + len(got), f"G04: watcher {mw.id} got extra events {got}"
        mw.received.extend(want[n:n + len(got)])
        mw.last_rev = revs[-1]
        self.max_event_rev[s] = max(self.max_event_rev[s], revs[-1])


def _kv(kv: Any) -> KV | None:
    if kv is None:
        return None
    return (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


def _ev(e: Any) -> Ev:
    kv = _kv(e.kv)
    assert kv is not None
    return (int(e.type), kv, _kv(e.prev_kv))


def _machine() -> type[WatchMachine]:
    class M(WatchMachine):
        def __init__(self) -> None:
            self.settled_at_compaction = {}
            super().__init__()

    return M


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_watch_hub_model() -> None:
    run_state_machine_as_test(_machine(), settings=SETTINGS)


@pytest.mark.parametrize("high_water", [1, 3])
def test_watch_hub_model_slow_consumers(monkeypatch: pytest.MonkeyPatch,
                                        high_water: int) -> None:
    monkeypatch.setattr(hub_module, "HIGH_WATER_RESPONSES", high_water)
    monkeypatch.setattr(hub_module, "LOW_WATER_RESPONSES", 1)
    monkeypatch.setattr(hub_module, "CATCH_UP_REVISIONS", 2)
    run_state_machine_as_test(_machine(), settings=SETTINGS)
