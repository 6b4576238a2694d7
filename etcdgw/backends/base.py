"""The backend interface: a durable, ordered revision log (DESIGN "Backends").

A backend stores every key version since the compaction point and the meta state (current and
compact revision, cluster and member ids). It knows nothing of etcd requests: the store hands it
whole batches of already-evaluated revisions, conditional on the revision it evaluated against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from etcdgw.mvcc.replica import Version

__all__ = [
    "Backend",
    "BackendError",
    "CommitConflict",
    "Committed",
    "LeaseChange",
    "Loaded",
    "LogPosition",
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
    """The backend's log is no longer where the batch was evaluated (another gateway committed
    first). ``position``: where the log was seen, when the backend knows (the store waits until
    its replica has applied that much before evaluating again)."""

    def __init__(self, message: str, position: LogPosition | None = None) -> None:
        super().__init__(message)
        self.position = position


class Throttled(BackendError):
    """The backend kept refusing for load (Cosmos 429) past its retries; nothing was applied.
    Clients get RESOURCE_EXHAUSTED ``etcdserver: too many requests`` (contract E05, E14)."""


class TailLost(BackendError):
    """A shared log's tail cannot continue without a gap (revisions this gateway never saw
    were compacted away): only a reload can bring the replica back. The store then loads the
    log again in process (etcdgw/follower.py) and starts a new tail where the load ended."""


class RequestTooLarge(BackendError):
    """One revision is larger than the backend can write atomically (Cosmos: one transactional
    batch, about 1.2 MB); nothing was applied. The store answers etcd's "request is too large"
    (errors.REQUEST_TOO_LARGE) for the request that made revision ``rev`` and may commit the
    others of the batch again without it."""

    def __init__(self, message: str, rev: int | None = None) -> None:
        super().__init__(message)
        self.rev = rev


class LogPosition(NamedTuple):
    """How far a shared log (or a replica of it) has got: its revision, and its lease sequence,
    the number of commits that changed lease records. A lease grant or revoke without keys
    creates no revision (M04) but changes what a request may be answered, so the revision
    alone cannot tell whether a replica has seen every acknowledged change; the pair can. Both
    only grow; a replica at ``p`` has seen everything up to ``q`` iff ``p.covers(q)``."""

    rev: int
    lease_seq: int

    def covers(self, other: LogPosition) -> bool:
        return self.rev >= other.rev and self.lease_seq >= other.lease_seq


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
    # Shared logs: the lease sequence of the log when ``rev`` was read (LogPosition).
    lease_seq: int = 0
    # Shared logs: live lease id -> the lease sequence its grant was committed at (a reload
    # keeps a lease's deadline only if it is the grant the gateway had already seen).
    lease_granted: Mapping[int, int] | None = None


class Backend(Protocol):
    async def load(self) -> Loaded: ...

    async def commit(
        self,
        expected_rev: int,
        revisions: list[Revision],
        compact_rev: int | None,
        leases: Sequence[LeaseChange] = (),
        *,
        expected_lease_seq: int = 0,
    ) -> None:
        """Make ``revisions`` (which continue ``expected_rev``), the new compaction point and
        the lease changes (applied in order) durable, atomically, or raise. Raises
        CommitConflict if the log moved on. ``expected_lease_seq`` is the rest of the position
        the batch was evaluated at (LogPosition); a private log, written by this gateway
        alone, cannot have moved and ignores it."""
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
    revision is the previous entry's ``rev`` + 1. ``lease_seq``, when set, says that once this
    entry is applied the replica has every lease change up to that lease sequence (an entry may
    carry only that: the tail learnt the log's position and has delivered everything before it).
    """

    rev: int
    revisions: list[Revision]
    compact_rev: int | None = None
    leases: Sequence[LeaseChange] = ()
    lease_seq: int | None = None


class SharedBackend(Backend, Protocol):
    """A log that several gateways write (Cosmos DB). Besides Backend's contract:

    - ``commit`` raises CommitConflict when another gateway committed first; it never returns
      or raises with the outcome unknown: a commit whose response was lost is resolved by
      reading the log before ``commit`` returns (committed: return; not: raise BackendError).
    - ``commit`` is conditional on the whole position: it raises CommitConflict when the log is
      not at (``expected_rev``, ``expected_lease_seq``), so a batch evaluated before another
      gateway's lease-only commit is evaluated again, not written over it.
    - ``tail`` follows every commit, this gateway's own included, from ``after_rev`` on. One
      tail at a time: a new one may start once the previous one has ended (raised, or was
      closed). A tail that cannot go on raises TailLost; ``load`` may then be called again (a
      reload) and a tail started from the revision it returned.
    - ``committed_position`` is the read barrier: the log's position now (one point read).
    - ``poke`` asks the tail to read now.
    """

    def tail(self, after_rev: int) -> AsyncIterator[Committed]: ...

    async def committed_position(self) -> LogPosition: ...

    def poke(self) -> None:
        """Have the tail read the log now rather than at its next poll (the store waits for
        changes it knows are there)."""
        ...
