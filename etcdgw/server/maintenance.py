"""etcdserverpb.Maintenance.Status and grpc.health.v1.Health/Check.

Status is polled by etcdctl ``endpoint status`` and by kube-apiserver (every 30 s, for its DB-size
metric and to decide which etcd features it may use from ``version``, MT02). The gateway has no
raft: the leader is itself, the term is constant and the raft indexes follow the store revision,
which keeps them non-decreasing (MT04). The other Maintenance methods are UNIMPLEMENTED for now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError

from etcdgw._proto import etcdserverpb
from etcdgw._proto.grpc.health import v1 as health
from etcdgw.server.boundary import Boundary
from etcdgw.store import RAFT_TERM, Store
from etcdgw.version import ETCD_VERSION

__all__ = ["DEFAULT_QUOTA_BYTES", "Health", "Maintenance"]

STATUS: Final = "/etcdserverpb.Maintenance/Status"
HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"

#: etcd's default --quota-backend-bytes (N05); reported as dbSizeQuota until quotas exist.
DEFAULT_QUOTA_BYTES: Final = 2 * 1024**3


class Maintenance:
    def __init__(
        self, store: Store, boundary: Boundary, *, db_size: Callable[[], tuple[int, int]]
    ) -> None:
        self._store = store
        self._boundary = boundary
        # The backend's (bytes on disk, bytes in use).
        self._db_size = db_size

    def __mapping__(self) -> dict[str, Handler]:
        return {STATUS: self._boundary.unary(STATUS, self.status, write=False)}

    async def status(self, request: Any) -> Any:
        store = self._store
        revision = store.revision
        size, in_use = self._db_size()
        # etcdctl endpoint status divides by dbSize; MT03 wants in_use <= size.
        size = max(size, 1)
        in_use = min(in_use, size)
        return etcdserverpb.StatusResponse(
            header=etcdserverpb.ResponseHeader(
                cluster_id=store.cluster_id,
                member_id=store.member_id,
                revision=revision,
                raft_term=RAFT_TERM,
            ),
            version=ETCD_VERSION,
            db_size=size,
            leader=store.member_id,
            raft_index=revision,
            raft_term=RAFT_TERM,
            raft_applied_index=revision,
            db_size_in_use=in_use,
            is_learner=False,
            db_size_quota=DEFAULT_QUOTA_BYTES,
        )


class Health:
    """The standard gRPC health service for the whole server (service ``""``), as etcd (T10)."""

    def __init__(self, boundary: Boundary) -> None:
        self._boundary = boundary

    def __mapping__(self) -> dict[str, Handler]:
        return {HEALTH_CHECK: self._boundary.unary(HEALTH_CHECK, self.check, write=False)}

    async def check(self, request: Any) -> Any:
        if request.service:
            # etcd registers only "", and grpc-go answers this for any other name.
            raise GRPCError(Status.NOT_FOUND, "unknown service")
        return health.HealthCheckResponse(status=health.HealthCheckResponseServingStatus.SERVING)
