"""etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.

Grant and Revoke are writes: they go through the store's commit pipeline (durable before the
answer; Revoke's header carries the revision of its deletions, H09). KeepAlive, TimeToLive and
Leases are answered from the in-memory lease table with the current revision in the header.

KeepAlive is one bidirectional stream carrying any number of requests, each answered in order
with the granted TTL, or TTL 0 for an unknown or expired lease (not an error, L09). A client that
half-closes its side (python-etcd3's one-shot refresh) gets the answers to what it sent, then the
stream ends with OK (L10).
"""

from __future__ import annotations

from typing import Any, Final

from grpclib.const import Handler

from etcdgw.alarms import Alarms
from etcdgw.lease.manager import LeaseManager
from etcdgw.server.boundary import Boundary, Call
from etcdgw.server.codec import Preencoded
from etcdgw.store import Store
from etcdgw.wire import f_bytes, f_int, f_msg

__all__ = ["Lease"]

GRANT: Final = "/etcdserverpb.Lease/LeaseGrant"
REVOKE: Final = "/etcdserverpb.Lease/LeaseRevoke"
KEEPALIVE: Final = "/etcdserverpb.Lease/LeaseKeepAlive"
TIME_TO_LIVE: Final = "/etcdserverpb.Lease/LeaseTimeToLive"
LEASES: Final = "/etcdserverpb.Lease/LeaseLeases"


class Lease:
    def __init__(
        self,
        store: Store,
        leases: LeaseManager,
        boundary: Boundary,
        alarms: Alarms | None = None,
    ) -> None:
        self._store = store
        self._leases = leases
        self._boundary = boundary
        # The space quota: LeaseGrant fails NO_SPACE under a NOSPACE alarm (L17).
        self._alarms = alarms

    def __mapping__(self) -> dict[str, Handler]:
        unary = self._boundary.unary
        return {
            # Grant and Revoke go through raft in etcd: size-limited like writes.
            GRANT: unary(GRANT, self.grant, write=True),
            REVOKE: unary(REVOKE, self.revoke, write=True),
            KEEPALIVE: self._boundary.streaming(KEEPALIVE, self.keepalive),
            TIME_TO_LIVE: unary(TIME_TO_LIVE, self.time_to_live, write=False),
            LEASES: unary(LEASES, self.leases, write=False),
        }

    def _header(self) -> bytes:
        store = self._store
        return f_msg(1, store.header(store.revision))

    async def grant(self, request: Any) -> Preencoded:
        if self._alarms is not None:
            self._alarms.check_lease_grant()
        return Preencoded(await self._leases.grant(request.id, request.ttl))

    async def revoke(self, request: Any) -> Preencoded:
        return Preencoded(await self._leases.revoke(request.id))

    async def keepalive(self, call: Call) -> None:
        while True:
            request = await call.recv()
            if request is None:
                return  # half-closed: everything sent was answered (L10)
            ttl = await self._leases.keepalive(request.id)
            await call.send(Preencoded(self._header() + f_int(2, request.id) + f_int(3, ttl)))

    async def time_to_live(self, request: Any) -> Preencoded:
        t = await self._leases.time_to_live(request.id, request.keys)
        body = self._header() + f_int(2, t.lease_id) + f_int(3, t.ttl) + f_int(4, t.granted_ttl)
        body += b"".join(f_bytes(5, key) for key in t.keys)
        return Preencoded(body)

    async def leases(self, request: Any) -> Preencoded:
        ids = await self._leases.leases()  # after the read barrier: header revision too
        body = self._header() + b"".join(f_msg(2, f_int(1, i)) for i in ids)
        return Preencoded(body)
