"""Helpers for the backend contract tests: a replica built from ``load()`` as Store.open builds
it, a reference replica built from what was committed, and a comparable dump of both."""

from __future__ import annotations

from typing import Any

from etcdgw.backends.base import Loaded, Revision
from etcdgw.mvcc.replica import Replica, Version


def replica_from_loaded(loaded: Loaded) -> Replica:
    """What Store.open does with a Loaded (keep in step with etcdgw/store.py)."""
    replica = Replica()
    for rev, changes in loaded.revisions:
        replica.apply(rev, changes)
    replica.set_revision(loaded.rev, loaded.compact_rev)
    if loaded.compact_rev > 0:
        replica.compact(loaded.compact_rev)
    return replica


def reference_replica(revisions: list[Revision], compact_rev: int = -1) -> Replica:
    replica = Replica()
    for rev, changes in revisions:
        replica.apply(rev, changes)
    if compact_rev > 0:
        replica.compact(compact_rev)
    else:
        replica.compact_rev = compact_rev
    return replica


def _v(v: Version) -> tuple[Any, ...]:
    return (v.key, v.mod, v.create, v.version, v.value, v.lease)


def dump(replica: Replica) -> dict[str, Any]:
    return {
        "rev": replica.rev,
        "compact_rev": replica.compact_rev,
        "keys": {k: [_v(v) for v in h.versions] for k, h in replica._hist.items()},
        "log": [(rev, [_v(v) for v in changes]) for rev, changes in replica.log],
    }


class History:
    """Builds revisions the way the store would (create/version bookkeeping per key)."""

    def __init__(self, rev: int = 1) -> None:
        self.rev = rev
        self.latest: dict[bytes, Version] = {}
        self.revisions: list[Revision] = []

    def next(self, ops: list[tuple[bytes, bytes | None, int]]) -> Revision:
        """One revision: (key, value or None for a delete, lease) per op, in order."""
        rev = self.rev + 1
        changes: list[Version] = []
        for key, value, lease in ops:
            prev = self.latest.get(key)
            live = prev is not None and prev.version > 0
            if value is None:
                v = Version.tombstone(key, rev)
            else:
                v = Version(key, rev, prev.create if live and prev else rev,
                            (prev.version + 1) if live and prev else 1, value, lease)
            self.latest[key] = v
            changes.append(v)
        self.rev = rev
        self.revisions.append((rev, changes))
        return rev, changes
