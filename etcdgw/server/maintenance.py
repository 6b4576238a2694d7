"""etcdserverpb.Maintenance and grpc.health.v1.Health/Check.

Status is polled by etcdctl ``endpoint status`` and by kube-apiserver (every 30 s, for its DB-size
metric and to decide which etcd features it may use from ``version``, MT02). The gateway has no
raft: the leader is itself and the term is constant. The raft indexes are the store revision plus
a count of the applied changes that create no revision (compactions, alarm changes), so they never
decrease while the process runs and move with every change, as etcd's do (MT04).

- Alarm: the table in :mod:`etcdgw.alarms` (MT05, MT06).
- Defragment: the backend reclaims file space (SQLite VACUUM for the embedded one).
- Hash/HashKV: :func:`etcdgw.mvcc.hash.hash_kv` over the replica (MT08). Hash covers the whole
  retained history at the current revision.
- Snapshot: a consistent backend copy streamed in etcd's framing, see :mod:`etcdgw.snapshot`.
- MoveLeader: the gateway is the only member and always the leader: moving to itself succeeds
  (etcd does the same), any other target is ``bad leader transferee`` (MT10).
- Downgrade: the emulated version cannot be downgraded: VALIDATE/ENABLE answer ``invalid
  downgrade target version`` (``wrong downgrade target version format`` for a malformed one),
  CANCEL ``no inflight downgrade job``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any, Final

from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError

from etcdgw import errors
from etcdgw._proto import etcdserverpb
from etcdgw._proto.grpc.health import v1 as health
from etcdgw.alarms import DEFAULT_QUOTA_BYTES, Alarms, alarm_name
from etcdgw.mvcc.hash import hash_kv
from etcdgw.mvcc.range import read_revision
from etcdgw.server.boundary import Boundary, Call
from etcdgw.snapshot import CHUNK_BYTES, frame_padding
from etcdgw.store import RAFT_TERM, Store
from etcdgw.version import ETCD_VERSION

__all__ = ["DEFAULT_QUOTA_BYTES", "Health", "Maintenance"]

_SERVICE: Final = "/etcdserverpb.Maintenance/"
STATUS: Final = _SERVICE + "Status"
ALARM: Final = _SERVICE + "Alarm"
DEFRAGMENT: Final = _SERVICE + "Defragment"
HASH: Final = _SERVICE + "Hash"
HASH_KV: Final = _SERVICE + "HashKV"
SNAPSHOT: Final = _SERVICE + "Snapshot"
MOVE_LEADER: Final = _SERVICE + "MoveLeader"
DOWNGRADE: Final = _SERVICE + "Downgrade"
HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"

_SEMVER: Final = re.compile(r"^\d+\.\d+(\.\d+)?$")
#: Bytes read from the snapshot copy per thread hop (then sent in CHUNK_BYTES messages).
_READ_BYTES: Final = 32 * CHUNK_BYTES


class Maintenance:
    def __init__(
        self,
        store: Store,
        boundary: Boundary,
        *,
        db_size: Callable[[], tuple[int, int]],
        alarms: Alarms | None = None,
        backend: Any = None,
    ) -> None:
        self._store = store
        self._boundary = boundary
        # The backend's (bytes on disk, bytes in use).
        self._db_size = db_size
        self._alarms = alarms if alarms is not None else Alarms(
            store.member_id, DEFAULT_QUOTA_BYTES, db_size
        )
        self._backend = backend
        # Applied changes that created no revision (raft index = revision + this).
        self._unrevisioned = 0
        store.compaction_listeners.append(self._count_change)
        self._alarms.on_change.append(self._count_change)

    def __mapping__(self) -> dict[str, Handler]:
        unary = self._boundary.unary
        return {
            STATUS: unary(STATUS, self.status, write=False),
            ALARM: unary(ALARM, self.alarm, write=True),
            DEFRAGMENT: unary(DEFRAGMENT, self.defragment, write=False),
            HASH: unary(HASH, self.hash, write=False),
            HASH_KV: unary(HASH_KV, self.hash_kv, write=False),
            SNAPSHOT: self._boundary.streaming(SNAPSHOT, self.snapshot),
            MOVE_LEADER: unary(MOVE_LEADER, self.move_leader, write=False),
            DOWNGRADE: unary(DOWNGRADE, self.downgrade, write=True),
        }

    def _count_change(self, *_: Any) -> None:
        self._unrevisioned += 1

    def _header(self, revision: int | None = None) -> Any:
        store = self._store
        return etcdserverpb.ResponseHeader(
            cluster_id=store.cluster_id,
            member_id=store.member_id,
            revision=store.revision if revision is None else revision,
            raft_term=RAFT_TERM,
        )

    @property
    def raft_index(self) -> int:
        return self._store.revision + self._unrevisioned

    # -- Status, Alarm ----------------------------------------------------------------------

    async def status(self, request: Any) -> Any:
        store = self._store
        await store.read_barrier()  # the header revision covers every acknowledged write
        revision = store.revision
        size, in_use = self._db_size()
        # etcdctl endpoint status divides by dbSize; MT03 wants in_use <= size.
        size = max(size, 1)
        in_use = min(in_use, size)
        index = self.raft_index
        return etcdserverpb.StatusResponse(
            header=self._header(revision),
            version=ETCD_VERSION,
            db_size=size,
            leader=store.member_id,
            raft_index=index,
            raft_term=RAFT_TERM,
            raft_applied_index=index,
            # etcd lists each active alarm as "memberID:<id> alarm:<TYPE> " (AlarmMember.String).
            errors=[
                f"memberID:{member} alarm:{alarm_name(alarm)} "
                for member, alarm in self._alarms.list()
            ],
            db_size_in_use=in_use,
            is_learner=False,
            db_size_quota=self._alarms.quota_bytes,
        )

    async def alarm(self, request: Any) -> Any:
        alarms = self._alarms
        action, member, alarm = int(request.action), request.member_id, int(request.alarm)
        if action == etcdserverpb.AlarmRequestAlarmAction.GET:
            found = alarms.list(alarm)
        elif action == etcdserverpb.AlarmRequestAlarmAction.ACTIVATE:
            entry = alarms.activate(member, alarm)
            found = [entry] if entry else []
        elif action == etcdserverpb.AlarmRequestAlarmAction.DEACTIVATE:
            entry = alarms.deactivate(member, alarm)
            found = [entry] if entry else []
        else:
            found = []
        return etcdserverpb.AlarmResponse(
            header=self._header(),
            alarms=[
                etcdserverpb.AlarmMember(member_id=m, alarm=etcdserverpb.AlarmType(a))
                for m, a in found
            ],
        )

    # -- Defragment, Hash, HashKV -----------------------------------------------------------

    async def defragment(self, request: Any) -> Any:
        defragment = getattr(self._backend, "defragment", None)
        if defragment is not None:  # a backend without files to compact has nothing to do
            await defragment()
        return etcdserverpb.DefragmentResponse()

    async def hash(self, request: Any) -> Any:
        await self._store.read_barrier()
        replica = self._store.replica
        return etcdserverpb.HashResponse(
            header=self._header(), hash=hash_kv(replica, replica.rev)
        )

    async def hash_kv(self, request: Any) -> Any:
        store = self._store
        await store.read_barrier()  # the hash of the log's state, not of a trailing replica
        replica = store.replica
        rev = read_revision(request.revision, replica.rev, replica.compact_rev)  # R03, R04
        return etcdserverpb.HashKvResponse(
            header=self._header(replica.rev),
            hash=hash_kv(replica, rev),
            compact_revision=replica.compact_rev,
            hash_revision=rev,
        )

    # -- Snapshot ---------------------------------------------------------------------------

    async def snapshot(self, call: Call) -> None:
        request = await call.recv()
        if request is None:
            raise errors.internal("etcdgw: no snapshot request")
        take = getattr(self._backend, "snapshot", None)
        if take is None:
            raise GRPCError(Status.UNIMPLEMENTED, "snapshots are not supported by this backend")
        directory = getattr(self._backend, "data_dir", None)
        fd, path = tempfile.mkstemp(prefix=".etcdgw-snapshot-", dir=directory)
        os.close(fd)
        try:
            await take(path)
            header = self._header()
            with open(path, "rb") as f:  # noqa: ASYNC230 - reads go through to_thread below
                await self._stream_file(call, f, header)
        finally:
            os.unlink(path)

    async def _stream_file(self, call: Call, f: Any, header: Any) -> None:
        size = os.fstat(f.fileno()).st_size
        total = size + frame_padding(size)
        digest = hashlib.sha256()
        sent = 0
        while sent < total:
            block: bytes = await asyncio.to_thread(f.read, _READ_BYTES)
            if sent + len(block) >= size:  # the end of the file: add the padding
                block += b"\0" * (total - sent - len(block))
            if not block:
                raise errors.internal("etcdgw: snapshot copy shrank while streaming")
            digest.update(block)
            for start in range(0, len(block), CHUNK_BYTES):
                chunk = block[start : start + CHUNK_BYTES]
                sent += len(chunk)
                await call.send(
                    etcdserverpb.SnapshotResponse(
                        header=header, remaining_bytes=total - sent, blob=chunk,
                        version=ETCD_VERSION,
                    )
                )
        await call.send(
            etcdserverpb.SnapshotResponse(
                header=header, remaining_bytes=0, blob=digest.digest(), version=ETCD_VERSION
            )
        )

    # -- MoveLeader, Downgrade --------------------------------------------------------------

    async def move_leader(self, request: Any) -> Any:
        if request.target_id != self._store.member_id:
            raise errors.BAD_LEADER_TRANSFEREE
        return etcdserverpb.MoveLeaderResponse(header=self._header())

    async def downgrade(self, request: Any) -> Any:
        if int(request.action) == etcdserverpb.DowngradeRequestDowngradeAction.CANCEL:
            raise errors.NO_INFLIGHT_DOWNGRADE
        if not _SEMVER.match(request.version):
            raise errors.WRONG_DOWNGRADE_VERSION_FORMAT
        raise errors.INVALID_DOWNGRADE_TARGET


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
