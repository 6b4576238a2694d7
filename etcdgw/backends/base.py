"""The backend interface: a durable, ordered revision log (DESIGN "Backends").

A backend stores every key version since the compaction point and the meta state (current and
compact revision, cluster and member ids). It knows nothing of etcd requests: the store hands it
whole batches of already-evaluated revisions, conditional on the revision it evaluated against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from etcdgw.mvcc.replica import Version

__all__ = ["Backend", "BackendError", "CommitConflict", "Loaded", "Revision"]

# One revision's changes, in execution order.
Revision = tuple[int, list[Version]]


class BackendError(Exception):
    """The backend could not do what was asked; nothing of the request was applied."""


class CommitConflict(BackendError):
    """The backend's revision is no longer the one the batch was evaluated against."""


@dataclass(frozen=True)
class Loaded:
    cluster_id: int
    member_id: int
    rev: int
    compact_rev: int
    # Every retained version, ascending by (revision, position in its revision).
    revisions: Iterator[Revision]


class Backend(Protocol):
    async def load(self) -> Loaded: ...

    async def commit(
        self, expected_rev: int, revisions: list[Revision], compact_rev: int | None
    ) -> None:
        """Make ``revisions`` (which continue ``expected_rev``) and the new compaction point
        durable, atomically, or raise. Raises CommitConflict if the log moved on."""
        ...

    async def compact(self, rev: int) -> None:
        """Physically drop what compaction at ``rev`` made unreachable, in bounded steps."""
        ...

    def size(self) -> tuple[int, int]:
        """(bytes on disk, bytes in use)."""
        ...

    async def close(self) -> None: ...
