"""The backend interface: a durable, ordered revision log (DESIGN "Backends").

A backend stores every key version since the compaction point and the meta state (current and
compact revision, cluster and member ids). It knows nothing of etcd requests: the store hands it
whole batches of already-evaluated revisions, conditional on the revision it evaluated against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from etcdgw.mvcc.replica import Version

__all__ = [
    "Backend",
    "BackendError",
    "CommitConflict",
    "Committed",
    "LeaseChange",
    "Loaded",
    "RequestTooLarge",
    "Revision",
    "SharedBackend",
    "TailLost",
    "Throttled",
]

# One revision's changes, in execution order.
Revision = tuple[int, list[Version]]
# A lease record change: (lease id, effective TTL in seconds) for a grant, (lease id, None) for a
# revoke or expiry. Only grants and revokes are durable; keepalives live in memory.
LeaseChange = tuple[int, int | None]


class BackendError(Exception):
    """The backend could not do what was asked; nothing of the request was applied."""


class CommitConflict(BackendError):
    """The backend's revision is no longer the one the batch was evaluated against."""


class Throttled(BackendError):
    """The backend kept refusing for load (Cosmos 429) past its retries; nothing was applied.
    Clients get RESOURCE_EXHAUSTED ``etcdserver: too many requests`` (contract E05, E14)."""


class TailLost(BackendError):
    """A shared log's tail cannot continue without a gap (revisions this gateway never saw
    were compacted away): only a reload can bring the replica back."""


class RequestTooLarge(BackendError):
    """One revision is larger than the backend can write atomically (Cosmos: one transactional
    batch, about 1.2 MB); nothing was applied. The store answers etcd's "request is too large"
    (errors.REQUEST_TOO_LARGE) for the request that made revision ``rev`` and may commit the
    others of the batch again without it."""

    def __init__(self, message: str, rev: int | None = None) -> None:
        super().__init__(message)
        self.rev = rev


@dataclass(frozen=True)
class Loaded:
    cluster_id: int
    member_id: int
    rev: int
    compact_rev: int
    # Every retained version, ascending by (revision, position in its revision).
    revisions: Iterator[Revision]
    # Every live lease: (lease id, effective TTL in seconds).
    leases: Sequence[tuple[int, int]] = ()


class Backend(Protocol):
    async def load(self) -> Loaded: ...

    async def commit(
        self,
        expected_rev: int,
        revisions: list[Revision],
        compact_rev: int | None,
        leases: Sequence[LeaseChange] = (),
    ) -> None:
        """Make ``revisions`` (which continue ``expected_rev``), the new compaction point and
        the lease changes (applied in order) durable, atomically, or raise. Raises
        CommitConflict if the log moved on."""
        ...

    async def compact(self, rev: int) -> None:
        """Physically drop what compaction at ``rev`` made unreachable, in bounded steps."""
        ...

    def size(self) -> tuple[int, int]:
        """(bytes on disk, bytes in use)."""
        ...

    async def close(self) -> None: ...


# -- several gateways on one log (DESIGN "Backends / cosmos") ---------------------------------


@dataclass(frozen=True)
class Committed:
    """One entry of a shared log's tail, in log order: what one commit made durable.

    ``rev`` is the log's revision after the entry; ``revisions`` the revisions it added (none
    for a lease-only or compaction-only commit). Entries come gap-free: each entry's first
    revision is the previous entry's ``rev`` + 1.
    """

    rev: int
    revisions: list[Revision]
    compact_rev: int | None = None
    leases: Sequence[LeaseChange] = ()


class SharedBackend(Backend, Protocol):
    """A log that several gateways write (Cosmos DB). Besides Backend's contract:

    - ``commit`` raises CommitConflict when another gateway committed first; it never returns
      or raises with the outcome unknown: a commit whose response was lost is resolved by
      reading the log before ``commit`` returns (committed: return; not: raise BackendError).
    - ``tail`` follows every commit, this gateway's own included, from ``after_rev`` on.
    - ``committed_revision`` is the read barrier: the log's revision now (one point read).
    """

    def tail(self, after_rev: int) -> AsyncIterator[Committed]: ...

    async def committed_revision(self) -> int: ...
