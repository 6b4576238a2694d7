"""The lease manager: the asyncio shell around the store's lease table (contract §11).

The store owns the durable side: grants and revokes go through its commit pipeline, ordered with
the writes of the same batch, and its :class:`~etcdgw.lease.table.LeaseTable` follows every
applied revision (attachments) and every durable grant/revoke. What is left here is time:

- keepalives (L09) reset a deadline in memory only: no disk write, no pipeline round trip;
- the expiry loop wakes every 500 ms (etcd's check interval), lists the leases past their
  deadline and revokes them through the pipeline, at most ``REVOKE_RATE`` per second in all
  (etcd's leaseRevokeRate, N05). Expiry may lag, never lead (L16): a lease is revoked only once
  the table says its deadline passed, and the store re-checks that when it evaluates the revoke;
- TimeToLive and LeaseLeases read the table.

Restarts: lease records are durable, deadlines are not. A restarted gateway gives every lease its
full TTL again from the moment it loads (see Store.open), so no lease expires earlier than TTL
after its last grant or keepalive (L15), at the price of expiring up to one TTL late.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from etcdgw import errors
from etcdgw.store import Store

__all__ = ["CHECK_INTERVAL", "REVOKE_RATE", "LeaseManager", "TimeToLive"]

log = logging.getLogger(__name__)

#: How often expired leases are looked for (etcd's lessor checks every 500 ms).
CHECK_INTERVAL: Final = 0.5
#: Expired leases revoked per second at most (etcd's leaseRevokeRate).
REVOKE_RATE: Final = 1000


@dataclass(frozen=True)
class TimeToLive:
    """What LeaseTimeToLive reports: ``ttl`` -1 for an unknown or expired lease (L12)."""

    lease_id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]


class LeaseManager:
    def __init__(self, store: Store, *, check_interval: float = CHECK_INTERVAL,
                 revoke_rate: int = REVOKE_RATE) -> None:
        self._store = store
        self._interval = check_interval
        self._per_tick = max(1, int(revoke_rate * check_interval))
        self._expiring: set[int] = set()  # expiry revokes in the pipeline
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._expiry_loop(), name="etcdgw-lease-expiry")

    async def close(self) -> None:
        """Stop expiring (before the store closes; queued revokes still finish there)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- requests ------------------------------------------------------------------------------

    async def grant(self, lease_id: int, ttl: int) -> bytes:
        return await self._store.lease_grant(lease_id, ttl)

    async def revoke(self, lease_id: int) -> bytes:
        return await self._store.lease_revoke(lease_id)

    def keepalive(self, lease_id: int) -> int:
        """The granted TTL with the deadline reset, or 0 if the lease is unknown or expired."""
        store = self._store
        return store.leases.renew(lease_id, store.clock())

    def time_to_live(self, lease_id: int, keys: bool) -> TimeToLive:
        store = self._store
        table = store.leases
        ttl = table.remaining(lease_id, store.clock())
        lease = table.get(lease_id)
        if ttl < 0 or lease is None:
            return TimeToLive(lease_id, -1, 0, ())
        return TimeToLive(lease_id, ttl, lease.ttl, tuple(table.keys(lease_id)) if keys else ())

    def leases(self) -> list[int]:
        store = self._store
        return store.leases.live(store.clock())

    # -- expiry --------------------------------------------------------------------------------

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
        store = self._store
        ids = [i for i in store.leases.expired(store.clock(), self._per_tick + len(self._expiring))
               if i not in self._expiring][: self._per_tick]
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
