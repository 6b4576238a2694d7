"""The lease table: live leases, their deadlines and the keys attached to them (contract §11).

Pure: no I/O, no awaits, no clock. Every method that depends on time takes ``now`` (seconds on
any monotonic scale; the manager passes ``time.monotonic()``). The store owns one table beside
its replica and keeps both in step: lease records change when a grant or revoke is durable,
attachments change with every applied revision (:meth:`LeaseTable.apply`), so the table always
describes the durable state at the replica's revision.

Rules kept here:
- TTLs are normalised by :func:`effective_ttl`: above ``MAX_TTL`` is an error (L05), below
  ``MIN_TTL`` is raised to it (L06).
- A lease is *expired* once ``now >= deadline``. An expired lease still exists until its revoke
  is durable (keys may still be attached to it, as in etcd), but it can no longer be renewed
  (a keepalive answers TTL 0, L09) and reads about it see it as gone (TimeToLive -1, L12).
- A key is attached to at most one lease: the lease of its latest put (M10, L14). A put without
  lease and a delete detach it. Attachments to a lease the table does not know are ignored
  (only a test hook can create such puts).
- :meth:`LeaseTable.expired` lists expired leases in deadline order (ties by id), from a heap
  with lazy deletion: a renewal pushes a new entry, stale entries are dropped when they surface.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from etcdgw import errors
from etcdgw.mvcc.replica import Version

__all__ = ["MAX_TTL", "MIN_TTL", "Lease", "LeaseTable", "effective_ttl"]

#: ceil(1.5 x election timeout) with etcd's defaults (N02, L06).
MIN_TTL: Final = 2
#: etcd's MaxLeaseTTL (N02, L05).
MAX_TTL: Final = 9_000_000_000


def effective_ttl(ttl: int) -> int:
    """The TTL a grant gets: LEASE_TTL_TOO_LARGE above the maximum, the minimum below it."""
    if ttl > MAX_TTL:
        raise errors.LEASE_TTL_TOO_LARGE
    return max(ttl, MIN_TTL)


class Lease:
    __slots__ = ("deadline", "id", "keys", "ttl")

    def __init__(self, lease_id: int, ttl: int, deadline: float) -> None:
        self.id = lease_id
        self.ttl = ttl  # effective granted TTL, seconds
        self.deadline = deadline
        self.keys: set[bytes] = set()

    def __repr__(self) -> str:
        return f"Lease({self.id}, ttl={self.ttl}, deadline={self.deadline}, {len(self.keys)} keys)"


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline, id); stale entries allowed

    # -- lease records (durable changes) -----------------------------------------------------

    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        """Add a lease whose deadline is ``now + ttl``; ``ttl`` is already effective."""
        if lease_id == 0:
            raise ValueError("lease id 0 means 'no lease'")
        if lease_id in self._leases:
            raise errors.LEASE_EXISTS
        lease = Lease(lease_id, ttl, now + ttl)
        self._leases[lease_id] = lease
        self._push(lease)
        return lease

    def revoke(self, lease_id: int) -> bool:
        """Forget a lease and detach its keys; False if it did not exist."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        for key in lease.keys:
            if self._key_lease.get(key) == lease_id:
                del self._key_lease[key]
        return True

    def replace(self, records: Iterable[tuple[int, int]], now: float,
                known: Callable[[int], bool]) -> None:
        """Take the lease records of a reload (lease id, effective TTL): a lease this table
        already has, with the same TTL, for which ``known(lease_id)`` holds (it is the grant
        this table saw, not one made again with the same id meanwhile) keeps its deadline and
        its Lease object; any other gets its full TTL from ``now``; leases not in ``records``
        are gone. So a reload never expires a lease early (L15). Every attachment is dropped:
        the caller applies the reloaded replica's live versions again (:meth:`apply`)."""
        old = self._leases
        self._leases = {}
        self._key_lease = {}
        for lease_id, ttl in records:
            lease = old.get(lease_id)
            if lease is not None and lease.ttl == ttl and known(lease_id):
                lease.keys = set()
            else:
                lease = Lease(lease_id, ttl, now + ttl)
            self._leases[lease_id] = lease
        self._heap = [(v.deadline, v.id) for v in self._leases.values()]
        heapq.heapify(self._heap)

    def fresh_id(self, rand: Callable[[], int], taken: Callable[[int], bool]) -> int:
        """A positive int64 id that no lease here has and ``taken`` does not claim (L04)."""
        while True:
            lease_id = rand() & (2**63 - 1)
            if lease_id and lease_id not in self._leases and not taken(lease_id):
                return lease_id

    # -- time ------------------------------------------------------------------------------

    def renew(self, lease_id: int, now: float) -> int:
        """KeepAlive (L09): reset the deadline to ``now + ttl`` and return the granted TTL; 0
        for an unknown or already expired lease (an expired lease is never revived)."""
        lease = self._leases.get(lease_id)
        if lease is None or now >= lease.deadline:
            return 0
        lease.deadline = now + lease.ttl
        self._push(lease)
        return lease.ttl

    def extend(self, lease_id: int, deadline: float) -> None:
        """Move a lease's deadline to ``deadline`` if that is later (never earlier): a renewal
        another gateway made durable, or a new expiry owner taking over (L15)."""
        lease = self._leases.get(lease_id)
        if lease is not None and deadline > lease.deadline:
            lease.deadline = deadline
            self._push(lease)

    def extend_all(self, now: float) -> None:
        """Every lease gets its full TTL from ``now`` (at least): what a new expiry owner
        does first, since it cannot know the keepalives its predecessor saw."""
        for lease in self._leases.values():
            self.extend(lease.id, now + lease.ttl)

    def remaining(self, lease_id: int, now: float) -> int:
        """TimeToLive's TTL (L12): whole seconds left, truncated; -1 if unknown or expired."""
        lease = self._leases.get(lease_id)
        if lease is None or now >= lease.deadline:
            return -1
        return int(lease.deadline - now)

    def is_expired(self, lease_id: int, now: float) -> bool:
        lease = self._leases.get(lease_id)
        return lease is not None and now >= lease.deadline

    def expired(self, now: float, limit: int | None = None) -> list[int]:
        """Ids of the leases with ``deadline <= now``, earliest deadline first (at most
        ``limit``). The leases stay in the table: only a durable revoke removes them."""
        heap = self._heap
        found: list[tuple[float, int]] = []
        seen: set[int] = set()
        while heap and heap[0][0] <= now and (limit is None or len(found) < limit):
            entry = heapq.heappop(heap)
            deadline, lease_id = entry
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline == deadline and lease_id not in seen:
                seen.add(lease_id)
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return [lease_id for _, lease_id in found]

    def _push(self, lease: Lease) -> None:
        heapq.heappush(self._heap, (lease.deadline, lease.id))
        if len(self._heap) > 2 * len(self._leases) + 64:  # drop stale entries
            self._heap = [(v.deadline, v.id) for v in self._leases.values()]
            heapq.heapify(self._heap)

    # -- attachments (every applied revision) ------------------------------------------------

    def apply(self, changes: Iterable[Version]) -> None:
        """Track the keys of one applied revision: a put attaches its key to its lease (if
        any), detaching it from the previous one; a delete detaches it (D03, L14)."""
        key_lease = self._key_lease
        leases = self._leases
        for v in changes:
            old = key_lease.pop(v.key, 0)
            if old:
                prev = leases.get(old)
                if prev is not None:
                    prev.keys.discard(v.key)
            if v.version and v.lease:
                lease = leases.get(v.lease)
                if lease is not None:
                    lease.keys.add(v.key)
                    key_lease[v.key] = v.lease

    # -- reads ---------------------------------------------------------------------------------

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(self._leases.values())

    def keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, ascending (the order a revoke deletes them in, M06)."""
        lease = self._leases.get(lease_id)
        return [] if lease is None else sorted(lease.keys)

    def lease_of(self, key: bytes) -> int:
        return self._key_lease.get(key, 0)

    def live(self, now: float) -> list[int]:
        """Ids of the unexpired leases, earliest deadline first (LeaseLeases, L13)."""
        alive = [v for v in self._leases.values() if now < v.deadline]
        alive.sort(key=lambda v: (v.deadline, v.id))
        return [v.id for v in alive]
