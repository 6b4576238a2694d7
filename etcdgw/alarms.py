"""Alarms and the backend space quota (contract MT05-MT06, L17, E05).

etcd keeps a table of active alarms (member id, alarm type). Two alarm types change what the
server accepts:

- ``NOSPACE``: raised when a write would grow the backend past ``--quota-backend-bytes``. While it
  is active, Put, every Txn with a Put in a branch, and LeaseGrant fail RESOURCE_EXHAUSTED
  ``etcdserver: mvcc: database space exceeded``; Range, DeleteRange, Txns without puts, Compact,
  LeaseRevoke and Defragment still work, so an operator can free space, defragment and disarm.
- ``CORRUPT``: every KV request fails DATA_LOSS ``etcdserver: corrupt cluster``.

The check lives in the server layer, before a request reaches the store pipeline, exactly where
etcd's quota interceptor sits (v3rpc/quota.go): each service calls one of the ``check_*`` methods
first. The cost estimate is etcd's (storage/quota.go): 256 bytes per put plus key and value,
the larger branch of a Txn (top-level puts only, as etcd), 64 bytes per lease.

Alarms are kept in memory, not persisted: a restart clears them. NOSPACE is derived state, so it
is raised again at startup when the backend is still over its quota (and by the next write that
would exceed it); a CORRUPT alarm activated by hand does not survive a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from etcdgw import errors

__all__ = [
    "CORRUPT",
    "DEFAULT_QUOTA_BYTES",
    "KV_OVERHEAD",
    "LEASE_OVERHEAD",
    "NONE",
    "NOSPACE",
    "Alarms",
    "alarm_name",
    "put_cost",
    "txn_cost",
]

log = logging.getLogger(__name__)

#: AlarmType values (etcdserverpb.AlarmType) as plain ints: the pure parts need no proto import.
NONE: Final = 0
NOSPACE: Final = 1
CORRUPT: Final = 2
_NAMES: Final = {NONE: "NONE", NOSPACE: "NOSPACE", CORRUPT: "CORRUPT"}

#: etcd's default --quota-backend-bytes (N05).
DEFAULT_QUOTA_BYTES: Final = 2 * 1024**3
#: etcd's per-key and per-lease storage estimates (server/storage/quota.go).
KV_OVERHEAD: Final = 256
LEASE_OVERHEAD: Final = 64


def alarm_name(alarm: int) -> str:
    """``NOSPACE``, ``CORRUPT``, ``NONE`` (etcd's AlarmType.String())."""
    return _NAMES.get(alarm, str(alarm))


def put_cost(req: Any) -> int:
    return KV_OVERHEAD + len(req.key) + len(req.value)


def txn_cost(req: Any) -> int:
    """etcd's costTxn: the larger branch, counting only its top-level puts (0 = no put)."""

    def branch(ops: Any) -> int:
        total = 0
        for op in ops:
            put = op.request_put
            if put is not None:
                total += put_cost(put)
        return total

    return max(branch(req.success), branch(req.failure))


class Alarms:
    """The alarm table and quota of one gateway.

    ``db_size`` returns the backend's ``(bytes on disk, bytes in use)``; the quota compares the
    bytes on disk, as etcd does (space freed by compaction is reclaimed only by Defragment).
    ``quota_bytes`` <= 0 disables the quota (etcd: a negative --quota-backend-bytes).
    """

    def __init__(
        self, member_id: int, quota_bytes: int, db_size: Callable[[], tuple[int, int]]
    ) -> None:
        self.member_id = member_id
        self.quota_bytes = quota_bytes
        self._db_size = db_size
        # (member id, alarm type), in activation order.
        self._active: dict[tuple[int, int], None] = {}
        #: Called after every change of the table (Status raft index, metrics).
        self.on_change: list[Callable[[], None]] = []
        if self.over_quota(0):
            log.warning("backend is over its quota (%d bytes) at startup", quota_bytes)
            self.activate(member_id, NOSPACE)

    # -- the table (Maintenance.Alarm) ------------------------------------------------------

    def list(self, alarm: int = NONE) -> list[tuple[int, int]]:
        """Active alarms: all of them for NONE, else those of that type."""
        return [a for a in self._active if alarm == NONE or a[1] == alarm]

    def activate(self, member_id: int, alarm: int) -> tuple[int, int] | None:
        if alarm == NONE:
            return None
        entry = (member_id, alarm)
        if entry not in self._active:
            self._active[entry] = None
            log.warning("alarm %s activated for member %x", alarm_name(alarm), member_id)
            self._changed()
        return entry

    def deactivate(self, member_id: int, alarm: int) -> tuple[int, int] | None:
        entry = (member_id, alarm)
        if entry not in self._active:
            return None
        del self._active[entry]
        log.warning("alarm %s deactivated for member %x", alarm_name(alarm), member_id)
        self._changed()
        return entry

    def active(self, alarm: int) -> bool:
        return any(a[1] == alarm for a in self._active)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    # -- checks the services make before a request reaches the store ---------------------

    def over_quota(self, cost: int) -> bool:
        if self.quota_bytes <= 0 or cost < 0:
            return False
        return self._db_size()[0] + cost > self.quota_bytes

    def check_corrupt(self) -> None:
        """Every KV request: a CORRUPT alarm stops them all (etcd's applierV3Corrupt)."""
        if self._active and self.active(CORRUPT):
            raise errors.CORRUPT

    def check_write(self, cost: int) -> None:
        """A request that grows the store by about ``cost`` bytes (0: it grows nothing).

        Raises NO_SPACE when the NOSPACE alarm is active, or raises the alarm (and NO_SPACE)
        when the backend would exceed its quota. Requests of cost 0 always pass.
        """
        self.check_corrupt()
        if cost <= 0:
            return
        if self._active and self.active(NOSPACE):
            raise errors.NO_SPACE
        if self.over_quota(cost):
            self.activate(self.member_id, NOSPACE)
            raise errors.NO_SPACE

    def check_put(self, req: Any) -> None:
        self.check_write(put_cost(req))

    def check_txn(self, req: Any) -> None:
        self.check_write(txn_cost(req))

    def check_lease_grant(self) -> None:
        """For the Lease service: call first in LeaseGrant (L17)."""
        self.check_write(LEASE_OVERHEAD)
