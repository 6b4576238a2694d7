"""The in-memory replica: every key's history since the compaction point, as wire bytes.

Pure: no I/O, no awaits. The store applies revisions here only after the backend has made them
durable (DESIGN rule 4), so a reader of the replica never sees an unacknowledgeable write.

Layout: a sorted list of every key that has any retained version (live or tombstoned, so that
reads at older revisions still find deleted keys), a dict key -> KeyHistory, and a log of the
changes of every retained revision in order (what watch replay reads).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Sequence
from operator import attrgetter

from etcdgw.mvcc.keys import KeyRange
from etcdgw.wire import encode_kv, frame2

__all__ = ["KeyHistory", "Replica", "Version"]


class Version:
    """One version of one key: a put, or a tombstone (``version`` == 0) recording a delete.

    ``framed`` is the KeyValue as field 2 of its parent message (RangeResponse.kvs, Event.kv,
    PutResponse.prev_kv): tag, length, bytes. For a tombstone it is the DELETE event form, which
    holds only the key and the deletion revision (contract M12).
    """

    __slots__ = ("create", "framed", "key", "lease", "mod", "value", "version")

    def __init__(
        self, key: bytes, mod: int, create: int, version: int, value: bytes, lease: int
    ) -> None:
        self.key = key
        self.mod = mod
        self.create = create
        self.version = version
        self.value = value
        self.lease = lease
        self.framed = frame2(encode_kv(key, create, mod, version, value, lease))

    @classmethod
    def tombstone(cls, key: bytes, mod: int) -> Version:
        return cls(key, mod, 0, 0, b"", 0)

    @property
    def is_tombstone(self) -> bool:
        return self.version == 0

    def keys_only(self) -> bytes:
        """Framed KeyValue without the value (Range keys_only); rare, so not cached."""
        return frame2(encode_kv(self.key, self.create, self.mod, self.version, b"", self.lease))

    def __repr__(self) -> str:
        if self.is_tombstone:
            return f"Version({self.key!r} deleted@{self.mod})"
        return (
            f"Version({self.key!r}@{self.mod} c={self.create} v={self.version} "
            f"lease={self.lease} {self.value[:16]!r})"
        )


_MOD = attrgetter("mod")


class KeyHistory:
    """The retained versions of one key, ascending by mod revision."""

    __slots__ = ("versions",)

    def __init__(self) -> None:
        self.versions: list[Version] = []

    def at(self, rev: int) -> Version | None:
        """The live version at ``rev`` (None if absent or deleted at that revision)."""
        vs = self.versions
        last = vs[-1]
        if last.mod <= rev:
            v = last
        else:
            i = bisect_right(vs, rev, key=_MOD)
            if i == 0:
                return None
            v = vs[i - 1]
        return None if v.version == 0 else v

    @property
    def latest(self) -> Version | None:
        v = self.versions[-1]
        return None if v.version == 0 else v


class Replica:
    """Sorted key index + per-key history + revision log.

    ``rev`` is the last applied revision (1 on an empty store, contract H04); ``compact_rev`` the
    compaction point: -1 = never, as in etcd, where Compact(0) is a real first compaction after
    which Compact(0) fails as already compacted."""

    def __init__(self) -> None:
        self.rev = 1
        self.compact_rev = -1
        self._keys: list[bytes] = []
        self._hist: dict[bytes, KeyHistory] = {}
        # (revision, changes) for every retained revision > compact_rev, ascending.
        self.log: list[tuple[int, list[Version]]] = []

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: bytes, rev: int | None = None) -> Version | None:
        h = self._hist.get(key)
        if h is None:
            return None
        return h.latest if rev is None or rev >= self.rev else h.at(rev)

    def range(self, kr: KeyRange, rev: int) -> Iterator[Version]:
        """Live versions at ``rev`` in ``kr``, ascending by key."""
        if kr.single:
            v = self.get(kr.start, rev)
            if v is not None:
                yield v
            return
        keys = self._keys
        lo = bisect_left(keys, kr.start)
        hi = len(keys) if kr.end is None else bisect_left(keys, kr.end, lo)
        hist = self._hist
        if rev >= self.rev:
            for i in range(lo, hi):
                v = hist[keys[i]].versions[-1]
                if v.version:
                    yield v
        else:
            for i in range(lo, hi):
                w = hist[keys[i]].at(rev)
                if w is not None:
                    yield w

    def keys_in(self, kr: KeyRange) -> Sequence[bytes]:
        """Every indexed key in ``kr`` (including ones deleted at the latest revision)."""
        if kr.single:
            return [kr.start] if kr.start in self._hist else []
        lo = bisect_left(self._keys, kr.start)
        hi = len(self._keys) if kr.end is None else bisect_left(self._keys, kr.end, lo)
        return self._keys[lo:hi]

    def history(self, key: bytes) -> KeyHistory | None:
        return self._hist.get(key)

    def __len__(self) -> int:
        return len(self._keys)

    # -- writes (only ever with durable revisions) ---------------------------------------------

    def apply(self, rev: int, changes: list[Version]) -> None:
        """Apply the changes of revision ``rev`` (== self.rev + 1 on a live store, or any
        later revision while loading from the backend, which may have gaps after compaction)."""
        if rev <= self.rev and self.rev > 1:
            raise ValueError(f"revision {rev} applied after {self.rev}")
        hist = self._hist
        for v in changes:
            h = hist.get(v.key)
            if h is None:
                h = hist[v.key] = KeyHistory()
                insort(self._keys, v.key)
            h.versions.append(v)
        self.rev = rev
        self.log.append((rev, changes))

    def set_revision(self, rev: int, compact_rev: int) -> None:
        """After loading: the backend's current and compact revision (the last revisions may
        have had their versions compacted away)."""
        self.rev = max(self.rev, rev)
        self.compact_rev = compact_rev

    def assume(self, other: Replica) -> None:
        """Take over ``other``'s whole state (a reload, after the store's tail was lost): one
        synchronous step, so every holder of this object (the store, the watch hub) sees the
        old state or the new one, never a mix. ``other`` must not be used afterwards."""
        self.rev = other.rev
        self.compact_rev = other.compact_rev
        self._keys = other._keys
        self._hist = other._hist
        self.log = other.log

    def compact(self, rev: int) -> None:
        """Drop history that reads at >= ``rev`` cannot see (contract C04): for every key the
        versions older than its version live at ``rev``, and that version too if it is a
        tombstone. Events of revisions < ``rev`` leave the log. Memory only; the backend does
        the same to its files in bounded batches."""
        self.compact_rev = rev
        gone: list[bytes] = []
        for key, h in self._hist.items():
            vs = h.versions
            if vs[0].mod > rev:
                continue
            i = bisect_right(vs, rev, key=_MOD) - 1  # the version at rev
            if vs[i].version == 0:
                i += 1
            if i:
                del vs[:i]
            if not vs:
                gone.append(key)
        if gone:
            for key in gone:
                del self._hist[key]
            self._keys = sorted(self._hist)
        j = bisect_left(self.log, rev, key=lambda e: e[0])
        if j:
            del self.log[:j]
