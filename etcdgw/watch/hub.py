"""The watch hub: one ordered feed of applied revisions fanned out to every watcher.

DESIGN rule 4: events come only from the tail. The store calls :meth:`WatchHub.on_apply` with
each durable revision, in order, right after the replica applied it; the hub matches the
revision's changes to watchers and appends responses to each watcher's stream queue, all in one
synchronous step. Because a stream's queue is the only path to its client, a progress response
queued after that step can never overtake an event of an earlier revision (W23).

Watchers are *synced* (they receive revisions as they are applied) or *catching up* (a history
replay from the replica's revision log, done by their stream's catch-up task). A watcher starts
catching up when it asks for past revisions, or when its stream's queue is too full to take
more live events (a slow consumer must not hold memory without bound or delay the others); it
becomes synced again, without gap or duplicate, once its replay reaches the current revision.
A catching-up watcher that compaction overtakes is cancelled with ``compact_revision`` (W08).

Matching does not visit every watcher per event: single-key watchers are found by dict lookup,
range watchers are grouped by their exact range (Kubernetes runs many watchers per resource
prefix), and each group's events are encoded once per distinct option set. Only synced watchers
are in that index. Replay shares work the same way: the watchers of a slow stream fall behind
together, at the same revision, so a catch-up window (range, start revision, options) is built
and encoded once and every watcher replaying it gets the same event bytes (:class:`_Window`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from collections.abc import Callable, Iterable

from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.replica import Replica, Version
from etcdgw.watch.events import EventCache, response, split_fragments

__all__ = ["WatchHub", "WatchStream", "Watcher"]

log = logging.getLogger(__name__)

HIGH_WATER_RESPONSES = 1024  # a stream's queue beyond which live events go to catch-up
HIGH_WATER_BYTES = 64 << 20
LOW_WATER_RESPONSES = 128  # catch-up resumes once the queue is this short
CATCH_UP_REVISIONS = 1000  # distinct revisions in one catch-up response (W16)
MERGE_BYTES = 256 << 10  # a queued event response takes later revisions up to this size
REPLAY_CACHE_REVISIONS = 4096  # encoded revisions kept for watchers replaying the same history
REPLAY_WINDOWS = 256  # catch-up windows kept for watchers replaying the same history

HeaderFn = Callable[[int], bytes]
GroupKey = tuple[bytes, bytes | None]
WindowKey = tuple[KeyRange, int, bool, bool, bool]


class _Window:
    """One catch-up step, shared by every watcher of one key range and option set replaying
    from the same revision R (:meth:`WatchHub.window`): the framed events of revisions R ..
    ``next_rev - 1`` (``revs`` of them had events), read while the store was at ``cur``, and the
    header for ``cur``. It stays exact while the store is at ``cur``, and for good when it ended
    before the log's end (``full``, CATCH_UP_REVISIONS revisions): later revisions do not change
    earlier ones. Never mutated: a watcher's queued response copies the list (W15, W16)."""

    __slots__ = ("cur", "events", "full", "header", "next_rev", "revs", "size")

    def __init__(self, events: list[bytes], revs: int, next_rev: int, cur: int, header: bytes,
                 full: bool) -> None:
        self.events = events
        self.size = sum(map(len, events))
        self.revs = revs
        self.next_rev = next_rev
        self.cur = cur
        self.header = header
        self.full = full


class _Pending:
    """A queued event response of one watcher, still open to later revisions of the same
    watcher until the sender takes it or a control response is queued behind it."""

    __slots__ = ("epoch", "events", "header", "revs", "size", "watcher")

    def __init__(self, w: Watcher, header: bytes, events: list[bytes], size: int, revs: int,
                 epoch: int) -> None:
        self.watcher = w
        self.header = header
        self.events = events
        self.size = size
        self.revs = revs
        self.epoch = epoch


class Watcher:
    __slots__ = ("fragment", "id", "kr", "next_rev", "nodelete", "noput", "pending", "prev_kv",
                 "progress_notify", "sent", "start_rev", "stream", "synced")

    def __init__(self, stream: WatchStream, watch_id: int, kr: KeyRange, start_rev: int,
                 next_rev: int, synced: bool, *, prev_kv: bool, noput: bool, nodelete: bool,
                 progress_notify: bool, fragment: bool) -> None:
        self.stream = stream
        self.id = watch_id
        self.kr = kr
        self.start_rev = start_rev
        self.next_rev = next_rev  # the lowest revision not yet delivered or skipped
        self.synced = synced
        self.prev_kv = prev_kv
        self.noput = noput
        self.nodelete = nodelete
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.sent = False  # events sent since the last progress tick
        self.pending: _Pending | None = None  # its last queued event response

    @property
    def group(self) -> GroupKey | None:
        return None if self.kr.single else (self.kr.start, self.kr.end)

    def wants(self, v: Version) -> bool:
        return not (self.nodelete if v.version == 0 else self.noput)


class WatchHub:
    def __init__(self, replica: Replica, header: HeaderFn, *, fragment_limit: int,
                 progress_interval: float) -> None:
        self.replica = replica
        self.header = header
        self.fragment_limit = fragment_limit
        self.progress_interval = progress_interval
        self._single: dict[bytes, set[Watcher]] = {}
        self._ranges: dict[GroupKey, set[Watcher]] = {}
        self.streams: set[WatchStream] = set()
        # rev -> its encoded events, shared by every watcher replaying that revision.
        self._replay_cache: dict[int, EventCache] = {}
        self._windows: dict[WindowKey, _Window] = {}
        self._demoted: list[Watcher] = []  # fell behind during on_apply: leave the index after
        self._ticker: asyncio.Task[None] | None = None

    @property
    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self.streams)

    def open_stream(self) -> WatchStream:
        if self._ticker is None and self.progress_interval > 0:
            self._ticker = asyncio.create_task(self._tick(), name="etcdgw-watch-progress")
        s = WatchStream(self)
        self.streams.add(s)
        return s

    async def close(self) -> None:
        for s in list(self.streams):
            s.close()
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass

    # -- the index ---------------------------------------------------------------------------

    def _add(self, w: Watcher) -> None:
        g = w.group
        if g is None:
            self._single.setdefault(w.kr.start, set()).add(w)
        else:
            self._ranges.setdefault(g, set()).add(w)

    def _remove(self, w: Watcher) -> None:
        g = w.group
        if g is None:
            ws = self._single.get(w.kr.start)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._single[w.kr.start]
        else:
            wr = self._ranges.get(g)
            if wr is not None:
                wr.discard(w)
                if not wr:
                    del self._ranges[g]

    # -- the feed ---------------------------------------------------------------------------

    def on_apply(self, rev: int, changes: list[Version]) -> None:
        """A durable revision, just applied to the replica: deliver it to synced watchers."""
        try:
            self._apply(rev, changes)
        finally:
            if self._demoted:
                for w in self._demoted:
                    self._remove(w)
                self._demoted.clear()

    def _apply(self, rev: int, changes: list[Version]) -> None:
        hits: dict[Watcher, list[int]] | None = None
        groups: list[tuple[Iterable[Watcher], list[int]]] = []
        if self._single:
            for i, v in enumerate(changes):
                ws = self._single.get(v.key)
                if ws:
                    hits = hits if hits is not None else {}
                    for w in ws:
                        hits.setdefault(w, []).append(i)
        for (start, end), group in self._ranges.items():
            idx = [i for i, v in enumerate(changes)
                   if v.key >= start and (end is None or v.key < end)]
            if idx:
                groups.append((group, idx))
        if hits is None and not groups:
            return
        cache = EventCache(self.replica, rev, changes)
        self._remember(cache)
        header = self.header(rev)
        if hits:
            for w, idx in hits.items():
                self._deliver(w, rev, header, self._events(cache, w, idx))
        for members, idx in groups:
            encoded: dict[tuple[bool, bool, bool], list[bytes]] = {}
            for w in members:
                if rev < w.next_rev:
                    continue  # a future start revision (W11)
                opts = (w.prev_kv, w.noput, w.nodelete)
                evs = encoded.get(opts)
                if evs is None:
                    evs = encoded[opts] = self._events(cache, w, idx)
                self._deliver(w, rev, header, evs)

    def _remember(self, cache: EventCache) -> None:
        rc = self._replay_cache
        if len(rc) >= REPLAY_CACHE_REVISIONS:
            rc.clear()
        rc[cache.rev] = cache

    def event_cache(self, rev: int, changes: list[Version]) -> EventCache:
        """The events of ``rev`` for a replay, encoded once for all replaying watchers."""
        cache = self._replay_cache.get(rev)
        if cache is None or cache.changes is not changes:
            cache = EventCache(self.replica, rev, changes)
            self._remember(cache)
        return cache

    def window(self, w: Watcher) -> _Window:
        """The catch-up window of ``w`` (from ``w.next_rev``, not compacted), built once for
        every watcher with the same range and options replaying from the same revision."""
        replica = self.replica
        cur = replica.rev
        key = (w.kr, w.next_rev, w.prev_kv, w.noput, w.nodelete)
        win = self._windows.get(key)
        if win is not None and (win.full or win.cur == cur):
            return win
        log_ = replica.log
        i = bisect.bisect_left(log_, w.next_rev, key=lambda e: e[0])
        j = min(len(log_), i + CATCH_UP_REVISIONS)
        events: list[bytes] = []
        revs = 0
        kr, prev_kv, noput, nodelete = w.kr, w.prev_kv, w.noput, w.nodelete
        single, start, end = kr.single, kr.start, kr.end
        event_cache = self.event_cache
        for rev, changes in log_[i:j]:
            cache: EventCache | None = None
            for n, v in enumerate(changes):
                k = v.key
                if single:
                    if k != start:
                        continue
                elif k < start or (end is not None and k >= end):
                    continue
                if nodelete if v.version == 0 else noput:
                    continue
                if cache is None:
                    cache = event_cache(rev, changes)
                    revs += 1
                events.append(cache.event(n, prev_kv))
        full = j < len(log_)
        next_rev = log_[j - 1][0] + 1 if full else cur + 1
        win = _Window(events, revs, next_rev, cur, self.header(cur), full)
        if len(self._windows) >= REPLAY_WINDOWS:
            self._windows.clear()
        self._windows[key] = win
        return win

    @staticmethod
    def _events(cache: EventCache, w: Watcher, idx: list[int]) -> list[bytes]:
        ch = cache.changes
        return [cache.event(i, w.prev_kv) for i in idx if w.wants(ch[i])]

    def _deliver(self, w: Watcher, rev: int, header: bytes, events: list[bytes]) -> None:
        if not w.synced or rev < w.next_rev:
            return  # catching up (it will replay rev), or a future start revision (W11)
        s = w.stream
        if s.over_high_water():
            w.synced = False
            w.next_rev = rev
            self._demoted.append(w)  # out of the index once on_apply is done with it
            s.wake_catch_up()
            return
        w.next_rev = rev + 1
        if events:
            w.sent = True
            s.push_events(w, header, events)

    def on_compact(self, rev: int) -> None:
        """Compaction at ``rev``: catching-up watchers below it are cancelled (W08, C07)."""
        self._windows.clear()
        for s in list(self.streams):
            for w in list(s.watchers.values()):
                if not w.synced and w.next_rev < rev:
                    s.cancel_compacted(w, rev)

    def on_reload(self) -> None:
        """The store reloaded the replica in place (its tail was lost, etcdgw/follower.py):
        the revisions between what the tail last delivered and the reloaded revision never
        came through :meth:`on_apply`. A synced watcher waiting for one of them (its next
        revision is at or below the replica's) catches up from that revision, replayed from
        the reloaded history without gap or duplicate, then goes live again; any watcher whose
        next revision the reloaded history no longer reaches (below the compaction point) is
        cancelled with ``compact_revision`` (W08). A watcher waiting for a future revision
        stays as it is."""
        replica = self.replica
        self._windows.clear()
        self._replay_cache.clear()  # encoded against the replica's old contents
        for s in list(self.streams):
            behind = False
            for w in list(s.watchers.values()):
                if w.synced and w.next_rev <= replica.rev:
                    w.synced = False
                    self._remove(w)
                if w.synced:
                    continue
                if w.next_rev < replica.compact_rev:
                    s.cancel_compacted(w, replica.compact_rev)
                else:
                    behind = True
            if behind:
                s.wake_catch_up()

    async def _tick(self) -> None:
        """W21: progress for every synced progress_notify watcher that got no events."""
        while True:
            await asyncio.sleep(self.progress_interval)
            cur = self.replica.rev
            header = self.header(cur)
            for s in list(self.streams):
                for w in s.watchers.values():
                    if w.progress_notify and w.synced and not w.sent and w.start_rev <= cur:
                        s.push(response(header, w.id))
                    w.sent = False


class WatchStream:
    """One gRPC Watch stream: its watchers, its ordered outgoing queue, its catch-up task."""

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self._out: collections.deque[bytes | _Pending] = collections.deque()
        self._out_bytes = 0
        self._out_count = 0  # responses queued, counting each merged revision as one
        self._epoch = 0  # bumped by every control response: merges never cross one
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._catch_up_wanted = asyncio.Event()
        self._catch_up: asyncio.Task[None] | None = None
        self.closed = False

    # -- the outgoing queue ---------------------------------------------------------------

    def _queued(self, item: bytes | _Pending, size: int) -> None:
        self._out.append(item)
        self._out_bytes += size
        self._out_count += 1
        self._readable.set()
        if self._out_count > LOW_WATER_RESPONSES:
            self._drained.clear()

    def push(self, data: bytes) -> None:
        """A control response (created, canceled, progress); later events never merge into
        a response queued before it, so it keeps its place in each watcher's order (W23)."""
        if self.closed:
            return
        self._epoch += 1
        self._queued(data, len(data))

    def push_events(self, w: Watcher, header: bytes, events: list[bytes], revs: int = 1,
                    size: int = -1) -> None:
        """Events of ``revs`` whole revisions for ``w``. While its previous event response is
        still queued (the client reads slower than revisions arrive) they join it, with the
        later header: fewer, larger responses for a slow reader, same order (W15, W16)."""
        if self.closed:
            return
        if size < 0:
            size = sum(map(len, events))
        p = w.pending
        if (p is not None and p.epoch == self._epoch and p.size + size <= MERGE_BYTES
                and p.revs + revs <= CATCH_UP_REVISIONS):
            p.header = header
            p.events.extend(events)
            p.size += size
            p.revs += revs
            self._out_bytes += size
            self._out_count += revs
            if self._out_count > LOW_WATER_RESPONSES:
                self._drained.clear()
            return
        p = w.pending = _Pending(w, header, list(events), size, revs, self._epoch)
        self._queued(p, size)
        self._out_count += revs - 1

    def over_high_water(self) -> bool:
        return self._out_count >= HIGH_WATER_RESPONSES or self._out_bytes >= HIGH_WATER_BYTES

    async def next_response(self) -> bytes:
        """The next response to send, encoded (a merged event response may need several, as
        fragments: the rest go back to the front of the queue)."""
        while not self._out:
            self._readable.clear()
            await self._readable.wait()
        item = self._out.popleft()
        if isinstance(item, bytes):
            self._out_bytes -= len(item)
            self._out_count -= 1
            data = item
        else:
            w = item.watcher
            if w.pending is item:
                w.pending = None  # taken: nothing more joins it
            self._out_bytes -= item.size
            self._out_count -= item.revs
            if w.fragment:
                parts = split_fragments(item.header, w.id, item.events, self.hub.fragment_limit)
                data = parts[0]
                for part in reversed(parts[1:]):
                    self._out.appendleft(part)
                    self._out_bytes += len(part)
                    self._out_count += 1
            else:
                data = response(item.header, w.id, b"".join(item.events))
        if self._out_count <= LOW_WATER_RESPONSES:
            self._drained.set()
        return data

    # -- requests -------------------------------------------------------------------------

    def create(self, *, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool,
               filters: Iterable[int], progress_notify: bool, fragment: bool,
               watch_id: int) -> None:
        from etcdgw import errors  # local: keeps the module's import graph one-way

        replica, header = self.hub.replica, self.hub.header
        cur = replica.rev
        kr = KeyRange.of(key or b"\x00", range_end)

        def refuse(reason: str) -> None:
            self.push(response(header(cur), -1, created_=True, canceled=True,
                               cancel_reason=reason))

        if start_revision < 0:
            return refuse(errors.COMPACTED.message)
        if kr.empty:
            return refuse(errors.WATCH_EMPTY_RANGE_REASON)
        if watch_id != 0 and watch_id in self.watchers:
            return refuse(errors.WATCH_DUPLICATE_ID_REASON)
        if watch_id == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        fs = set(filters)
        synced = start_revision == 0 or start_revision > cur
        next_rev = max(cur + 1, start_revision) if synced else start_revision
        w = Watcher(self, watch_id, kr, start_revision, next_rev, synced, prev_kv=prev_kv,
                    noput=0 in fs, nodelete=1 in fs, progress_notify=progress_notify,
                    fragment=fragment)
        self.watchers[watch_id] = w
        if synced:
            self.hub._add(w)
        self.push(response(header(cur), watch_id, created_=True))
        if not synced:
            self.wake_catch_up()

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return  # W19: unknown id, no response
        self.hub._remove(w)
        self.push(response(self.hub.header(self.hub.replica.rev), watch_id, canceled=True))

    def cancel_compacted(self, w: Watcher, compact_rev: int) -> None:
        if self.watchers.pop(w.id, None) is None:
            return
        self.hub._remove(w)
        # W08/H11: header revision 0, canceled, compact_revision set.
        self.push(response(self.hub.header(0), w.id, canceled=True,
                           compact_revision=compact_rev))

    def progress(self) -> None:
        """W22: one progress response if every watcher is synced and past its start."""
        if not self.watchers:
            return
        cur = self.hub.replica.rev
        if all(w.synced and w.start_rev <= cur for w in self.watchers.values()):
            self.push(response(self.hub.header(cur), -1))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.watchers.values():
            self.hub._remove(w)
        self.watchers.clear()
        self._out.clear()
        self.hub.streams.discard(self)
        if self._catch_up is not None:
            self._catch_up.cancel()

    # -- catch-up -------------------------------------------------------------------------

    def wake_catch_up(self) -> None:
        if self._catch_up is None:
            self._catch_up = asyncio.create_task(self._catch_up_loop(),
                                                 name="etcdgw-watch-catch-up")
        self._catch_up_wanted.set()

    async def _catch_up_loop(self) -> None:
        while not self.closed:
            await self._catch_up_wanted.wait()
            self._catch_up_wanted.clear()
            while not self.closed:
                behind = [w for w in self.watchers.values() if not w.synced]
                if not behind:
                    break
                for w in behind:
                    await self._drained.wait()
                    if self.watchers.get(w.id) is w and not w.synced:
                        self._replay(w)

    def _replay(self, w: Watcher) -> None:
        """One catch-up step for ``w``: at most CATCH_UP_REVISIONS revisions from history, in
        one response; synced again when it reaches the current revision. Runs without awaiting,
        so no revision can be applied between the replay's end and the switch to live."""
        hub = self.hub
        replica = hub.replica
        if w.next_rev < replica.compact_rev:
            self.cancel_compacted(w, replica.compact_rev)
            return
        win = hub.window(w)
        cur = replica.rev
        w.next_rev = win.next_rev
        if win.events:
            w.sent = True
            header = win.header if win.cur == cur else hub.header(cur)
            self.push_events(w, header, win.events, win.revs, win.size)
        if w.next_rev > cur:
            w.synced = True
            hub._add(w)
