"""The lease manager: the asyncio shell around the store's lease table (contract §11).

The store owns the durable side: grants and revokes go through its commit pipeline, ordered with
the writes of the same batch, and its :class:`~etcdgw.lease.table.LeaseTable` follows every
applied revision (attachments) and every durable grant/revoke. What is left here is time:

- keepalives (L09) reset a deadline in memory only: no pipeline round trip, and on a private
  log no disk write either (a shared one makes them durable, below);
- the expiry loop wakes every 500 ms (etcd's check interval), lists the leases past their
  deadline and revokes them through the pipeline, at most ``REVOKE_RATE`` per second in all
  (etcd's leaseRevokeRate, N05). Expiry may lag, never lead (L16): a lease is revoked only once
  the table says its deadline passed, and the store re-checks that when it evaluates the revoke;
- TimeToLive and LeaseLeases read the table.

Restarts: lease records are durable, deadlines are not. A restarted gateway gives every lease its
full TTL again from the moment it loads (see Store.open), so no lease expires earlier than TTL
after its last grant or keepalive (L15), at the price of expiring up to one TTL late.

Several gateways on one shared log (``shared``, the Cosmos backend) add two rules, because a
keepalive may reach any gateway and a gateway may die:

- one gateway at a time expires leases: the *owner*, holding a claim it renews every
  OWNER_RENEW seconds for OWNER_TTL seconds (the claim's deadline is on the gateways' wall
  clocks, ``wall``: skew there moves who expires, never when). A new owner first gives every
  lease its full TTL from now (it cannot know what keepalives its predecessor answered), so
  takeover never expires early;
- a keepalive is answered only once durable: each gateway counts the keepalives it answers per
  lease and writes the counters (one write per RENEW_FLUSH window for all keepalives of that
  window, not one per keepalive), continuing across restarts from what it wrote before.

No wall clock decides expiry (contract L15 whatever the clocks say): the owner compares
counters only with the counters it read before, and times only on its own clock
(``store.clock``). The rule: whenever the owner reads the counters and one of a lease's
changed since its previous read (or is new to it), a keepalive happened before that read, so
the lease lives at least until the owner's time of the read + TTL (its deadline is moved
there, never earlier). A lease past its deadline here is revoked only after one more read
shows no change. The owner reads when a lease is due, so a keepalive counts from when the
owner first sees it: never early, at most one TTL late (etcd allows late, never early). A new
owner has no previous read: its first read counts every counter as changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from etcdgw import errors
from etcdgw.store import Store

__all__ = ["CHECK_INTERVAL", "REVOKE_RATE", "LeaseManager", "TimeToLive"]

log = logging.getLogger(__name__)

#: How often expired leases are looked for (etcd's lessor checks every 500 ms).
CHECK_INTERVAL: Final = 0.5
#: Expired leases revoked per second at most (etcd's leaseRevokeRate).
REVOKE_RATE: Final = 1000
#: Shared logs: how long an owner claim lasts, how often it is renewed (or sought).
OWNER_TTL: Final = 10.0
OWNER_RENEW: Final = 2.0
#: Shared logs: keepalives are made durable together, once per this window.
RENEW_FLUSH: Final = 0.05


class SharedLeases(Protocol):
    """What a shared log offers for leases across gateways (CosmosBackend)."""

    async def claim_lease_owner(self, member_id: int, ttl: float, now: float) -> bool:
        """Become or stay the expiry owner for ``ttl`` s from ``now`` (wall clock)."""

    async def save_renewals(self, member_id: int, renewals: dict[int, int],
                            changed: set[int]) -> None:
        """Make this gateway's counters durable (lease id -> keepalives answered, live leases
        only); ``changed``: leases renewed or dropped since the last call that returned.
        ``renewals`` is read when the call is made and must not be replaced meanwhile."""

    async def load_renewals(self) -> dict[tuple[int, int], int]:
        """Every gateway's counters: (member id, lease id) -> keepalives answered."""


@dataclass(frozen=True)
class TimeToLive:
    """What LeaseTimeToLive reports: ``ttl`` -1 for an unknown or expired lease (L12)."""

    lease_id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]


class LeaseManager:
    def __init__(self, store: Store, *, check_interval: float = CHECK_INTERVAL,
                 revoke_rate: int = REVOKE_RATE, shared: SharedLeases | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._interval = check_interval
        self._per_tick = max(1, int(revoke_rate * check_interval))
        self._expiring: set[int] = set()  # expiry revokes in the pipeline
        self._tasks: list[asyncio.Task[None]] = []
        self._shared = shared
        self._wall = wall
        self.owner = shared is None  # a private log's only gateway always expires
        self._renewed: dict[int, int] = {}  # this gateway's keepalives answered per lease
        self._changed: set[int] = set()  # leases renewed or dropped since the last save
        self._resumed = False  # counters continued from this gateway's durable ones
        self._seen: dict[tuple[int, int], int] = {}  # the owner's last read of the counters
        self._dirty = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="etcdgw-lease-expiry"))
        if self._shared is not None:
            self._tasks.append(asyncio.create_task(self._own(), name="etcdgw-lease-owner"))
            self._tasks.append(asyncio.create_task(self._flush(), name="etcdgw-lease-renewals"))

    async def close(self) -> None:
        """Stop expiring (before the store closes; queued revokes still finish there)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(errors.SERVER_STOPPED)

    # -- requests ------------------------------------------------------------------------------

    async def grant(self, lease_id: int, ttl: int) -> bytes:
        return await self._store.lease_grant(lease_id, ttl)

    async def revoke(self, lease_id: int) -> bytes:
        return await self._store.lease_revoke(lease_id)

    async def keepalive(self, lease_id: int) -> int:
        """The granted TTL with the deadline reset, or 0 if the lease is unknown or expired.
        On a shared log it returns once the renewal is durable for whichever gateway owns
        expiry."""
        store = self._store
        ttl = store.leases.renew(lease_id, store.clock())
        if self._shared is None:
            return ttl
        if ttl == 0:
            # Unknown here: it may have been granted through another gateway and not have come
            # in by the tail yet. The read barrier decides (linearizable "not found").
            await store.read_barrier()
            ttl = store.leases.renew(lease_id, store.clock())
            if ttl == 0:
                return 0
        self._renewed[lease_id] = self._renewed.get(lease_id, 0) + 1
        self._changed.add(lease_id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._dirty.set()
        await fut  # durable, and the flush's read barrier has run since this call arrived
        # Revoked through another gateway meanwhile (the barrier brought that in): gone.
        return ttl if lease_id in store.leases else 0

    async def time_to_live(self, lease_id: int, keys: bool) -> TimeToLive:
        store = self._store
        await store.read_barrier()  # granted, renewed or revoked through another gateway
        table = store.leases
        ttl = table.remaining(lease_id, store.clock())
        lease = table.get(lease_id)
        if ttl < 0 or lease is None:
            return TimeToLive(lease_id, -1, 0, ())
        return TimeToLive(lease_id, ttl, lease.ttl, tuple(table.keys(lease_id)) if keys else ())

    async def leases(self) -> list[int]:
        """LeaseLeases: every live lease, after the read barrier (leases granted or revoked
        through other gateways before the call are counted as such)."""
        await self._store.read_barrier()
        return self.live()

    def live(self) -> list[int]:
        """The live leases this gateway knows of now (no barrier: for metrics)."""
        store = self._store
        return store.leases.live(store.clock())

    # -- expiry --------------------------------------------------------------------------------

    # -- several gateways -------------------------------------------------------------------

    async def _own(self) -> None:
        assert self._shared is not None
        member_id = self._store.member_id
        while True:
            try:
                owner = await self._shared.claim_lease_owner(member_id, OWNER_TTL, self._wall())
            except Exception as e:  # unreachable log: stop expiring until it answers again
                log.warning("lease owner claim failed: %s", e)
                owner = False
            if owner and not self.owner:
                self._seen = {}  # what it read as an earlier owner is no history to go by
                store = self._store
                store.leases.extend_all(store.clock())
                log.info("this gateway now expires leases (%d leases given their full TTL)",
                         len(store.leases))
            elif self.owner and not owner:
                log.info("another gateway now expires leases")
            self.owner = owner
            await asyncio.sleep(OWNER_RENEW)

    async def _flush(self) -> None:
        """Make the keepalives answered since the last flush durable, in one write."""
        assert self._shared is not None
        while True:
            await self._dirty.wait()
            await asyncio.sleep(RENEW_FLUSH)  # gather the window's keepalives
            self._dirty.clear()
            waiters, self._waiters = self._waiters, []
            try:
                await self._save()
                # Each keepalive of the window is answered from the lease table after this
                # barrier (one point read for the whole window): a lease revoked through
                # another gateway before the keepalive arrived answers TTL 0.
                await self._store.read_barrier()
            except Exception as e:
                log.warning("saving lease renewals failed: %s", e)
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(errors.TIMEOUT)
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _save(self) -> None:
        assert self._shared is not None
        store, shared = self._store, self._shared
        live = store.leases
        if not self._resumed:
            # A restarted gateway goes on from the counters it wrote before: counting from 0
            # again could write a value the owner already read, and hide a keepalive.
            before = await shared.load_renewals()
            for (member_id, lease_id), n in before.items():
                if member_id == store.member_id and lease_id in live:
                    self._renewed[lease_id] = self._renewed.get(lease_id, 0) + n
                    self._changed.add(lease_id)
            self._resumed = True
        gone = [i for i in self._renewed if i not in live]
        for lease_id in gone:
            del self._renewed[lease_id]
        self._changed.update(gone)
        changed, self._changed = self._changed, set()
        try:
            await shared.save_renewals(store.member_id, self._renewed, changed)
        except BaseException:
            self._changed |= changed  # written again by the next flush
            raise

    async def _still_expired(self, ids: list[int]) -> list[int]:
        """Of leases expired here, those no gateway renewed since the owner's previous read of
        the counters; every lease whose counter changed (these or others) gets its deadline
        moved to now + TTL, now being on this gateway's clock, just after the read."""
        if self._shared is None or not ids:
            return ids
        renewals = await self._shared.load_renewals()
        store = self._store
        now, table, seen = store.clock(), store.leases, self._seen
        for key, n in renewals.items():
            if seen.get(key) != n:
                lease = table.get(key[1])
                if lease is not None:
                    table.extend(lease.id, now + lease.ttl)
        self._seen = renewals
        return [i for i in ids if table.is_expired(i, now)]

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.expire_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: keep expiring
                log.exception("lease expiry failed")

    async def expire_once(self) -> int:
        """Revoke (through the pipeline) up to one tick's share of the expired leases; the
        number revoked. The revokes are submitted together, so they share one group commit."""
        if not self.owner:
            return 0
        store = self._store
        ids = [i for i in store.leases.expired(store.clock(), self._per_tick + len(self._expiring))
               if i not in self._expiring][: self._per_tick]
        ids = await self._still_expired(ids)
        if not ids:
            return 0
        self._expiring.update(ids)
        try:
            results = await asyncio.gather(*(store.lease_expire(i) for i in ids),
                                           return_exceptions=True)
        finally:
            self._expiring.difference_update(ids)
        revoked = 0
        for lease_id, result in zip(ids, results, strict=True):
            if isinstance(result, bytes):
                revoked += 1
            elif isinstance(result, errors.EtcdError):
                if result not in (errors.LEASE_NOT_FOUND, errors.SERVER_STOPPED):
                    log.warning("expiry of lease %016x failed (retried): %s", lease_id,
                                result.message)
            elif isinstance(result, BaseException):
                raise result
        if revoked:
            log.debug("expired %d leases", revoked)
        return revoked
