"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact, served by the Store.

The store validates requests, raises :class:`~etcdgw.errors.EtcdError` and returns responses
already encoded (Range and Txn bodies are spliced from stored KeyValue bytes, see DESIGN "Hot
paths"), so each method here only forwards and wraps the bytes for the codec. Sizes, metadata and
error translation are the boundary's; the space quota and alarms (L17) are checked here first,
before a request reaches the store's pipeline (:mod:`etcdgw.alarms`).
"""

from __future__ import annotations

from typing import Any, Final

from grpclib.const import Handler

from etcdgw.alarms import DEFAULT_QUOTA_BYTES, Alarms
from etcdgw.mvcc.txn import is_read_only
from etcdgw.server.boundary import Boundary
from etcdgw.server.codec import Preencoded
from etcdgw.store import Store

__all__ = ["KV", "is_mutating_txn"]

RANGE: Final = "/etcdserverpb.KV/Range"
PUT: Final = "/etcdserverpb.KV/Put"
DELETE_RANGE: Final = "/etcdserverpb.KV/DeleteRange"
TXN: Final = "/etcdserverpb.KV/Txn"
COMPACT: Final = "/etcdserverpb.KV/Compact"


def is_mutating_txn(request: Any) -> bool:
    """A Txn is a write unless all its ops (both branches, nested Txns) are Ranges. Read-only
    Txns bypass raft in etcd, so ``--max-request-bytes`` does not apply to them."""
    return not is_read_only(request)


class KV:
    def __init__(self, store: Store, boundary: Boundary, alarms: Alarms | None = None) -> None:
        self._store = store
        self._boundary = boundary
        self._alarms = (
            alarms if alarms is not None else Alarms(store.member_id, DEFAULT_QUOTA_BYTES, _no_size)
        )

    def __mapping__(self) -> dict[str, Handler]:
        unary = self._boundary.unary
        return {
            RANGE: unary(RANGE, self.range, write=False),
            PUT: unary(PUT, self.put, write=True),
            DELETE_RANGE: unary(DELETE_RANGE, self.delete_range, write=True),
            TXN: unary(TXN, self.txn, write=is_mutating_txn),
            # Compaction goes through raft in etcd, so it is size-limited like a write.
            COMPACT: unary(COMPACT, self.compact, write=True),
        }

    async def range(self, request: Any) -> Preencoded:
        self._alarms.check_corrupt()
        return Preencoded(await self._store.range(request))

    async def put(self, request: Any) -> Preencoded:
        self._alarms.check_put(request)
        return Preencoded(await self._store.put(request))

    async def delete_range(self, request: Any) -> Preencoded:
        self._alarms.check_corrupt()
        return Preencoded(await self._store.delete_range(request))

    async def txn(self, request: Any) -> Preencoded:
        self._alarms.check_txn(request)
        return Preencoded(await self._store.txn(request))

    async def compact(self, request: Any) -> Preencoded:
        self._alarms.check_corrupt()
        return Preencoded(await self._store.compact(request))


def _no_size() -> tuple[int, int]:
    return (0, 0)
