"""The replica as the commit pipeline sees it: durable state plus the batch being evaluated.

The pipeline evaluates queued writes in order; request i of a batch sees the effects of
requests 0..i-1 although none of them is durable yet (DESIGN rule 3). The Overlay holds those
pending versions per key, so reads at any revision up to ``rev`` (durable or pending) are exact.
Nothing here touches the replica: a batch that fails to commit is simply dropped.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.replica import Replica, Version

__all__ = ["Overlay"]


class Overlay:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.rev = replica.rev
        self.compact_rev = replica.compact_rev
        self._pending: dict[bytes, list[Version]] = {}
        self._keys: list[bytes] = []  # sorted keys of _pending
        self.revisions: list[tuple[int, list[Version]]] = []
        self.compactions: list[int] = []

    @property
    def empty(self) -> bool:
        return not self.revisions and not self.compactions

    def get(self, key: bytes, rev: int | None = None) -> Version | None:
        """The live version of ``key`` at ``rev`` (default: latest, including pending)."""
        p = self._pending.get(key)
        if p is not None:
            if rev is None:
                v = p[-1]
                return None if v.version == 0 else v
            for v in reversed(p):
                if v.mod <= rev:
                    return None if v.version == 0 else v
        return self.replica.get(key, rev)

    def range(self, kr: KeyRange, rev: int) -> list[Version]:
        """Live versions at ``rev`` in ``kr``, ascending by key."""
        if not self._pending or rev <= self.replica.rev:
            return list(self.replica.range(kr, rev))
        if kr.single:
            v = self.get(kr.start, rev)
            return [] if v is None else [v]
        lo = bisect_left(self._keys, kr.start)
        hi = len(self._keys) if kr.end is None else bisect_left(self._keys, kr.end, lo)
        pending_keys = self._keys[lo:hi]
        if not pending_keys:
            return list(self.replica.range(kr, rev))
        out: dict[bytes, Version | None] = {v.key: v for v in self.replica.range(kr, rev)}
        for k in pending_keys:
            out[k] = self.get(k, rev)
        return [v for _, v in sorted(out.items()) if v is not None]

    def stage(self, rev: int, changes: list[Version]) -> None:
        """Record the changes of pending revision ``rev`` (== self.rev + 1)."""
        assert rev == self.rev + 1, (rev, self.rev)
        for v in changes:
            p = self._pending.get(v.key)
            if p is None:
                self._pending[v.key] = [v]
                insort(self._keys, v.key)
            else:
                p.append(v)
        self.rev = rev
        self.revisions.append((rev, changes))

    def stage_compaction(self, rev: int) -> None:
        self.compact_rev = rev
        self.compactions.append(rev)
