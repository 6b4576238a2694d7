"""The store: owns the replica, serves reads from it, and runs the commit pipeline.

Writes (DESIGN rule 3): requests queue up; the pipeline takes everything queued, evaluates it
in order against the replica plus an overlay of the batch (request i sees requests < i), commits
the batch to the backend as one conditional append, and only then applies it to the replica and
answers. A batch that fails to commit leaves nothing anywhere: the overlay is dropped and every
request in it fails. Reads never wait for the pipeline: the replica only ever holds durable
revisions, so a read started after an acknowledgement observes it (rule 2; with one embedded
writer the read barrier is free).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

from etcdgw import errors
from etcdgw.backends.base import (
    Backend,
    BackendError,
    CommitConflict,
    LeaseChange,
    LogPosition,
    RequestTooLarge,
    SharedBackend,
    Throttled,
)
from etcdgw.follower import Follower, replica_from
from etcdgw.lease.table import LeaseTable, effective_ttl
from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.overlay import Overlay
from etcdgw.mvcc.range import check_range_request, execute_range, read_revision
from etcdgw.mvcc.replica import Replica, Version
from etcdgw.mvcc.txn import (
    WriteResult,
    check_delete_request,
    check_put_request,
    check_txn_request,
    evaluate_delete,
    evaluate_put,
    evaluate_txn,
    is_read_only,
    op_kind,
)
from etcdgw.wire import f_int, f_msg

__all__ = ["Store"]

log = logging.getLogger(__name__)

# How long a write or a linearizable read waits for this gateway's replica to catch up with
# the shared log (after a conflict, or for the read barrier) before failing UNAVAILABLE.
CATCH_UP_TIMEOUT = 7.0
RAFT_TERM = 1  # there is no raft; a constant term >= 1 never decreases (H03)
MAX_BATCH = 512  # requests per group commit

ApplyListener = Callable[[int, list[Version]], None]


class _Queued:
    __slots__ = ("fut", "kind", "req")

    def __init__(self, kind: str, req: Any, fut: asyncio.Future[bytes]) -> None:
        self.kind = kind
        self.req = req
        self.fut = fut


class _LeaseBatch:
    """The lease side of one batch being evaluated, as the Overlay is its key side: grants and
    revokes staged so far (request i sees those of requests < i) and the keys put with a lease
    by the batch's pending revisions (so a revoke also deletes keys attached earlier in it)."""

    __slots__ = ("attached", "changes", "granted", "revoked")

    def __init__(self) -> None:
        self.granted: set[int] = set()
        self.revoked: set[int] = set()
        self.attached: dict[int, set[bytes]] = {}
        # (overlay revision when staged, change) in evaluation order: a change staged at
        # overlay revision R takes effect after revision R and before R + 1.
        self.changes: list[tuple[int, LeaseChange]] = []

    def exists(self, lease_id: int, durable: Callable[[int], bool]) -> bool:
        if lease_id in self.granted:
            return True
        return lease_id not in self.revoked and durable(lease_id)

    def grant(self, at: int, lease_id: int, ttl: int) -> None:
        self.granted.add(lease_id)
        self.revoked.discard(lease_id)
        self.changes.append((at, (lease_id, ttl)))

    def revoke(self, at: int, lease_id: int) -> None:
        self.granted.discard(lease_id)
        self.revoked.add(lease_id)
        self.changes.append((at, (lease_id, None)))

    def staged(self, changes: list[Version]) -> None:
        for v in changes:
            if v.lease and v.version:
                self.attached.setdefault(v.lease, set()).add(v.key)


class Store:
    def __init__(self, backend: Backend, replica: Replica, cluster_id: int, member_id: int,
                 max_txn_ops: int) -> None:
        self._backend = backend
        self.replica = replica
        self._cluster_id = cluster_id
        self._member_id = member_id
        self.max_txn_ops = max_txn_ops
        self._hdr_prefix = f_int(1, cluster_id) + f_int(2, member_id)
        self._hdr_suffix = f_int(4, RAFT_TERM)
        self._hdr_cache: tuple[int, bytes] = (0, b"")
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._pipeline: asyncio.Task[None] | None = None
        self._compaction: asyncio.Task[None] | None = None
        self._closing = False
        # The durable lease records and key attachments, kept in step with the replica.
        self.leases = LeaseTable()
        # The lease clock (monotonic seconds); deadlines in ``leases`` are on this scale.
        self.clock: Callable[[], float] = time.monotonic
        # Whether a durable lease exists (P03, X17); a hook tests may replace.
        self.lease_exists: Callable[[int], bool] = self.leases.__contains__
        # Called with each durable revision, in order, after the replica has applied it.
        self.listeners: list[ApplyListener] = []
        # Called with the new compaction point once the replica has compacted.
        self.compaction_listeners: list[Callable[[int], None]] = []
        # Called after each durable group commit: (requests in the batch, seconds it took).
        self.commit_listeners: list[Callable[[int, float], None]] = []
        # Several gateways on one log (Cosmos): other gateways' commits arrive by the tail.
        self._shared: SharedBackend | None = (
            cast(SharedBackend, backend) if hasattr(backend, "tail") else None
        )
        self._follower: asyncio.Task[None] | None = None
        self.follower: Follower | None = None  # the tail (etcdgw/follower.py)
        # Held by the pipeline while it evaluates, commits and applies a batch, and by a reload
        # while it loads the log and replaces the replica: writes never interleave with one.
        self._gate = asyncio.Lock()
        # Called once a reload has replaced the replica's and the lease table's contents.
        self.reload_listeners: list[Callable[[], None]] = []
        # Our own lease changes, applied when they committed, that the tail will bring back:
        # skipped once each there (a lease-only commit has no revision to skip it by).
        self._echo: collections.Counter[LeaseChange] = collections.Counter()
        self._advanced = asyncio.Event()  # set (and replaced) whenever the replica moves on
        # The lease sequence of the log that the lease table has caught up with (LogPosition):
        # with the replica's revision, how far this gateway has followed a shared log.
        self._lease_seq = 0

    @classmethod
    async def open(cls, backend: Backend, *, max_txn_ops: int = 128,
                   member_name: str | None = None) -> Store:
        """Load ``backend`` into a replica and start the pipeline. On a shared log every
        gateway is a member of its own: its id derives from the cluster id and its
        ``member_name`` (unique per gateway, like etcd's --name), so it is stable across
        restarts and needs no local state (G05)."""
        loaded = await backend.load()
        replica = replica_from(loaded)
        member_id = loaded.member_id
        if hasattr(backend, "tail") and member_name:
            member_id = shared_member_id(loaded.cluster_id, member_name)
        store = cls(backend, replica, loaded.cluster_id, member_id, max_txn_ops)
        store._lease_seq = loaded.lease_seq
        # A restart cannot know how much of a lease's TTL was left (keepalives are not written
        # to disk), so every lease gets its full TTL again from now: never expired early (L15),
        # at worst one TTL late (L16 allows late expiry).
        now = store.clock()
        for lease_id, ttl in loaded.leases:
            store.leases.grant(lease_id, ttl, now)
        store.leases.apply(v for v in replica.range(KeyRange.of(b"\x00", b"\x00"), replica.rev)
                           if v.lease)
        store._pipeline = asyncio.create_task(store._run(), name="etcdgw-commit-pipeline")
        if store._shared is not None:
            store.follower = Follower(store, store._shared)
            store._follower = asyncio.create_task(
                store.follower.run(loaded.rev), name="etcdgw-log-tail"
            )
        if loaded.compact_rev > 0:
            store._start_physical_compaction(loaded.compact_rev)
        log.info("store loaded: revision %d, compact revision %d, %d keys, %d leases",
                 replica.rev, replica.compact_rev, len(replica), len(store.leases))
        return store

    async def close(self) -> None:
        """Finish what is queued, then stop; the backend is closed by its owner."""
        if self._closing:
            return
        self._closing = True
        await self._queue.join()
        for task in (self._follower, self._pipeline, self._compaction):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # already logged where it happened
                    pass

    # -- identity and headers --------------------------------------------------------------

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def member_id(self) -> int:
        return self._member_id

    @property
    def revision(self) -> int:
        return self.replica.rev

    @property
    def compact_revision(self) -> int:
        return self.replica.compact_rev

    @property
    def position(self) -> LogPosition:
        """How far this gateway has applied the log (revision, lease sequence)."""
        return LogPosition(self.replica.rev, self._lease_seq)

    def header(self, rev: int) -> bytes:
        """ResponseHeader body for ``rev`` (cluster_id, member_id, revision, raft_term)."""
        cached_rev, cached = self._hdr_cache
        if cached_rev == rev:
            return cached
        h = self._hdr_prefix + f_int(3, rev) + self._hdr_suffix
        self._hdr_cache = (rev, h)
        return h

    # -- reads -----------------------------------------------------------------------------

    async def range(self, req: Any) -> bytes:
        check_range_request(req)
        if not req.serializable:
            await self.read_barrier()
        r = self.replica
        rev = read_revision(req.revision, r.rev, r.compact_rev)
        return execute_range(r, req, rev, self.header(r.rev))

    # -- writes ----------------------------------------------------------------------------

    # Every write goes through the pipeline, whatever it turns out to do: a write that changes
    # nothing (a failed compare, a delete that matches nothing, an unknown lease) is decided on
    # the replica and is answered only once the pipeline has shown that the replica was at the
    # log's head after the request arrived (see _commit_batch).

    async def put(self, req: Any) -> bytes:
        check_put_request(req)
        return await self._submit("put", req)

    async def delete_range(self, req: Any) -> bytes:
        check_delete_request(req)
        return await self._submit("delete", req)

    async def txn(self, req: Any) -> bytes:
        check_txn_request(req, self.max_txn_ops)
        if is_read_only(req):  # a read: the read barrier, as for Range
            if not _all_serializable(req):
                await self.read_barrier()
            ov = Overlay(self.replica)
            return evaluate_txn(ov, req, self.lease_exists, self.header).response
        return await self._submit("txn", req)

    async def compact(self, req: Any) -> bytes:
        return await self._submit("compact", req)

    # -- lease writes (contract §11) ---------------------------------------------------------

    async def lease_grant(self, lease_id: int, ttl: int) -> bytes:
        """LeaseGrantResponse: durable, but no revision (M04). ``lease_id`` 0: server-chosen."""
        ttl = effective_ttl(ttl)  # L05, L06
        return await self._submit("lease_grant", (lease_id, ttl))

    async def lease_revoke(self, lease_id: int) -> bytes:
        """LeaseRevokeResponse: the lease and, in one revision, its keys are gone (L07)."""
        return await self._submit("lease_revoke", lease_id)

    async def lease_expire(self, lease_id: int) -> bytes:
        """A revoke that applies only if the lease is still expired when it is evaluated (a
        lease revoked and granted again with the same id meanwhile is not the same lease)."""
        return await self._submit("lease_expire", lease_id)

    async def _submit(self, kind: str, req: Any) -> bytes:
        if self._closing:
            raise errors.SERVER_STOPPED
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(kind, req, fut))
        return await fut

    # -- the commit pipeline ---------------------------------------------------------------

    async def _run(self) -> None:
        q = self._queue
        while True:
            batch = [await q.get()]
            while not q.empty() and len(batch) < MAX_BATCH:
                batch.append(q.get_nowait())
            try:
                await self._commit_batch(batch)
            except Exception:  # a bug: fail the batch, keep the pipeline alive
                log.exception("commit pipeline failed")
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_exception(errors.internal("etcdgw: internal error"))
            finally:
                for _ in batch:
                    q.task_done()

    async def _commit_batch(self, batch: list[_Queued]) -> None:
        """Evaluate, commit, apply, answer.

        Linearizability on a shared log (several gateways, DESIGN rule 3). Every answer of the
        batch, a failed compare or an error as much as a write, is decided on the replica, and
        the replica may trail the log. It is told only once something proves that the replica
        was at the log's head at a moment after every request of the batch had arrived:

        - the batch changed something: its conditional commit succeeded, so the log was exactly
          at the position (revision, lease sequence) the batch was evaluated at when it
          committed. On a conflict (another gateway committed first) the tail brings those
          changes in and the whole batch is evaluated again;
        - the batch changed nothing (only failed compares, deletes of nothing, errors): the
          read barrier, one point read of the log's position; if the replica is behind it, it
          catches up and the batch is evaluated again (a delete that found nothing may now find
          the key another gateway has just put).

        Each evaluation, its commit and its application hold the gate (``_gate``), which a
        reload holds while it loads the log and replaces the replica (etcdgw/follower.py): a
        batch waits for a reload at most CATCH_UP_TIMEOUT, then fails UNAVAILABLE. Waiting
        for the tail (after a conflict, or behind the barrier) happens outside the gate.
        """
        pending = [item for item in batch if not item.fut.done()]
        while pending:
            if not await self._enter_gate():
                self._fail(pending, errors.TIMEOUT)  # a reload held it (the tail was lost)
                return
            conflict: CommitConflict | None = None
            committed = False
            try:  # evaluate, commit, apply: under the gate, never beside a reload
                at = self.position
                expected = at.rev
                ov = Overlay(self.replica)
                lb = _LeaseBatch()
                done: list[tuple[_Queued, bytes, bool, int]] = []  # item, response, physical, rev
                failed: list[tuple[_Queued, errors.EtcdError]] = []
                for item in pending:
                    if item.fut.done():  # the caller went away before evaluation: never applied
                        continue
                    try:
                        response, physical = self._evaluate(ov, item, lb)
                    except errors.EtcdError as e:
                        failed.append((item, e))
                        continue
                    done.append((item, response, physical, ov.rev))

                compact_rev = ov.compactions[-1] if ov.compactions else None
                if ov.revisions or compact_rev is not None or lb.changes:
                    commit_started = time.perf_counter()
                    changes = [change for _, change in lb.changes]
                    try:
                        await self._backend.commit(expected, ov.revisions, compact_rev, changes,
                                                   expected_lease_seq=at.lease_seq)
                    except CommitConflict as e:
                        conflict = e  # caught up with outside the gate (a reload may be due)
                    except RequestTooLarge as e:
                        # One revision did not fit the backend's largest commit: that request
                        # fails as too large (X19), the others are evaluated again without it.
                        too_big = e.rev if e.rev is not None else expected + 1
                        culprit = [it for it, _, _, rev in done if rev >= too_big][:1]
                        for item in culprit:
                            item.fut.set_exception(errors.REQUEST_TOO_LARGE)
                        pending = [it for it in pending if it not in culprit]
                        if not culprit:
                            self._fail(pending, errors.REQUEST_TOO_LARGE)
                            return
                        continue
                    except BackendError as e:
                        log.error("commit of revisions %d..%d failed: %s", expected + 1, ov.rev,
                                  e)
                        throttled = isinstance(e, Throttled)
                        self._fail(pending,
                                   errors.TOO_MANY_REQUESTS if throttled else errors.TIMEOUT)
                        return
                    else:
                        committed = True
                        for on_commit in self.commit_listeners:
                            on_commit(len(done), time.perf_counter() - commit_started)
                        if self._shared is not None:
                            self._echo.update(changes)
                        if changes:  # the backend counts every commit with lease changes
                            self._lease_seq = at.lease_seq + 1
                        self._apply_batch(ov, lb, compact_rev)
            finally:
                self._gate.release()

            if conflict is not None:
                seen = conflict.position
                if seen is not None and at.covers(seen):
                    seen = None  # no position beyond ours: ask the log where it is
                try:
                    await self._catch_up(seen)
                except errors.EtcdError as catch_up_failed:
                    self._fail(pending, catch_up_failed)
                    return
                continue
            if not committed and self._shared is not None:
                # Nothing to commit, so no conditional append vouches for the replica: the
                # read barrier does (one point read), taken after the batch was formed.
                try:
                    head = await self._log_position()
                    # Compared with where the batch was evaluated, not with the replica now:
                    # the tail may have applied more during the point read, and then the
                    # answers are older than the log's head, however current the replica is.
                    behind = not at.covers(head)
                    if behind:
                        await self._catch_up(head)
                except errors.EtcdError as barrier_failed:
                    self._fail(pending, barrier_failed)
                    return
                if behind:
                    continue

            for item, err in failed:
                if not item.fut.done():
                    item.fut.set_exception(err)
            for item, response, physical, _ in done:
                if physical and self._compaction is not None:
                    await asyncio.shield(self._compaction)
                if not item.fut.done():
                    item.fut.set_result(response)
            return

    async def _enter_gate(self) -> bool:
        """Take the pipeline's gate; False if a reload holds it past CATCH_UP_TIMEOUT."""
        gate = self._gate
        if not gate.locked():
            await gate.acquire()
            return True
        try:
            async with asyncio.timeout(CATCH_UP_TIMEOUT):
                await gate.acquire()
        except TimeoutError:
            log.warning("a write waited %.0f s for the reload of this gateway's replica",
                        CATCH_UP_TIMEOUT)
            return False
        return True

    def _apply_batch(self, ov: Overlay, lb: _LeaseBatch, compact_rev: int | None) -> None:
        """Durable: apply in revision order (lease records in their place between the
        revisions), then tell listeners (watch)."""
        replica = self.replica
        pending = lb.changes
        i = 0
        for rev, changes in ov.revisions:
            while i < len(pending) and pending[i][0] < rev:
                self._apply_lease_change(pending[i][1])
                i += 1
            replica.apply(rev, changes)
            self.leases.apply(changes)
            for listener in self.listeners:
                listener(rev, changes)
        for _, change in pending[i:]:
            self._apply_lease_change(change)
        if compact_rev is not None:
            self._apply_compaction(compact_rev)
            self._start_physical_compaction(compact_rev)
        self._advance()

    def _apply_compaction(self, compact_rev: int) -> None:
        self.replica.compact(compact_rev)
        for on_compact in self.compaction_listeners:
            on_compact(compact_rev)

    @staticmethod
    def _fail(items: list[_Queued], err: errors.EtcdError) -> None:
        for item in items:
            if not item.fut.done():
                item.fut.set_exception(err)

    # -- several gateways on one log -------------------------------------------------------

    async def read_barrier(self) -> None:
        """The read barrier (rule 2): learn the log's position (one point read) and wait until
        this gateway has applied it, so that what is answered next reflects every change any
        gateway acknowledged before the call. Free on a private log (this gateway is its only
        writer, so its replica is the log's head)."""
        if self._shared is None:
            return
        head = await self._log_position()
        if not self.position.covers(head):
            await self._catch_up(head)

    async def _log_position(self) -> LogPosition:
        assert self._shared is not None
        try:
            return await self._shared.committed_position()
        except BackendError as e:
            log.warning("read barrier failed: %s", e)
            throttled = isinstance(e, Throttled)
            raise (errors.TOO_MANY_REQUESTS if throttled else errors.TIMEOUT) from None

    async def _catch_up(self, target: LogPosition | None) -> None:
        """Wait until the replica covers ``target`` (after a conflict: where the backend saw
        the log; None: learn it). The tail is poked to read at once instead of at its next
        poll. Raises TIMEOUT after CATCH_UP_TIMEOUT."""
        if self._shared is None:
            # A private log has one writer, this gateway: a conflict means the backend and
            # the replica disagree, which no waiting can mend.
            log.error("the log moved on under this gateway's only writer (at %s)",
                      tuple(self.position))
            raise errors.TIMEOUT
        if target is None:
            target = await self._log_position()
        if self.position.covers(target):
            return
        self._shared.poke()
        if not await self._wait_position(target):
            log.warning("replica at %s did not reach the log's %s within %.0f s",
                        tuple(self.position), tuple(target), CATCH_UP_TIMEOUT)
            raise errors.TIMEOUT

    async def _wait_position(self, target: LogPosition) -> bool:
        """Wait until the replica covers ``target``; False after CATCH_UP_TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT
        while not self.position.covers(target):
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):  # (3.11's wait_for can swallow a cancel)
                    await self._advanced.wait()
            except TimeoutError:
                return False
        return True

    def _advance(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    def _apply_lease_change(self, change: LeaseChange) -> None:
        lease_id, ttl = change
        if ttl is None:
            self.leases.revoke(lease_id)
        else:
            self.leases.grant(lease_id, ttl, self.clock())

    def _evaluate(self, ov: Overlay, item: _Queued,
                  lb: _LeaseBatch | None = None) -> tuple[bytes, bool]:
        req = item.req
        res: WriteResult
        if lb is None:
            lb = _LeaseBatch()
        durable = self.lease_exists

        def lease_exists(lease_id: int) -> bool:
            return lb.exists(lease_id, durable)

        if item.kind == "put":
            res = evaluate_put(ov, req, lease_exists, self.header)
        elif item.kind == "delete":
            res = evaluate_delete(ov, req, self.header)
        elif item.kind == "txn":
            res = evaluate_txn(ov, req, lease_exists, self.header)
        elif item.kind == "lease_grant":
            return self._evaluate_grant(ov, lb, req), False
        elif item.kind in ("lease_revoke", "lease_expire"):
            return self._evaluate_revoke(ov, lb, req, item.kind == "lease_expire"), False
        else:  # compact (C02, C03): does not create a revision
            if req.revision <= ov.compact_rev:
                raise errors.COMPACTED
            if req.revision > ov.rev:
                raise errors.FUTURE_REV
            ov.stage_compaction(req.revision)
            return f_msg(1, self.header(ov.rev)), bool(req.physical)
        if res.changes:
            ov.stage(res.rev, res.changes)
            lb.staged(res.changes)
        return res.response, False

    def _evaluate_grant(self, ov: Overlay, lb: _LeaseBatch, req: tuple[int, int]) -> bytes:
        lease_id, ttl = req
        durable = self.lease_exists
        if lease_id == 0:  # L04: a fresh positive int64, unique among live and staged leases
            lease_id = self.leases.fresh_id(
                lambda: secrets.randbits(63), lambda i: lb.exists(i, durable))
        elif lb.exists(lease_id, durable):
            raise errors.LEASE_EXISTS
        lb.grant(ov.rev, lease_id, ttl)
        return f_msg(1, self.header(ov.rev)) + f_int(2, lease_id) + f_int(3, ttl)

    def _evaluate_revoke(self, ov: Overlay, lb: _LeaseBatch, lease_id: int,
                         expiry: bool) -> bytes:
        if not lb.exists(lease_id, self.lease_exists):
            raise errors.LEASE_NOT_FOUND
        if expiry and (lease_id in lb.granted or not self.leases.is_expired(lease_id,
                                                                           self.clock())):
            raise errors.LEASE_NOT_FOUND  # renewed or granted again: not this expiry's lease
        # The keys attached now: durable attachments plus the batch's own puts, each checked
        # against the overlay (a later put in the batch may have detached it).
        candidates = set(self.leases.keys(lease_id))
        candidates.update(lb.attached.get(lease_id, ()))
        doomed = []
        for key in sorted(candidates):
            v = ov.get(key)
            if v is not None and v.lease == lease_id:
                doomed.append(key)
        if doomed:  # one revision, ascending key order (L07, M06); none without keys (M04)
            rev = ov.rev + 1
            ov.stage(rev, [Version.tombstone(key, rev) for key in doomed])
        lb.revoke(ov.rev, lease_id)
        return f_msg(1, self.header(ov.rev))

    def _start_physical_compaction(self, rev: int) -> None:
        prev = self._compaction

        async def run() -> None:
            if prev is not None and not prev.done():
                await prev
            try:
                await self._backend.compact(rev)
            except BackendError as e:
                log.warning("physical compaction at %d stopped: %s", rev, e)

        self._compaction = asyncio.create_task(run(), name=f"etcdgw-compact-{rev}")


def shared_member_id(cluster_id: int, name: str) -> int:
    """A non-zero positive int64 member id for gateway ``name`` of cluster ``cluster_id``."""
    digest = hashlib.sha256(b"%d/" % cluster_id + name.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1) or 1


def _all_serializable(req: Any) -> bool:
    """A read-only txn is served without the read barrier only if every Range in it (both
    branches, nested txns) asks for a serializable read (X18)."""
    for op in (*req.success, *req.failure):
        kind, r = op_kind(op)
        if kind == "request_range" and not r.serializable:
            return False
        if kind == "request_txn" and not _all_serializable(r):
            return False
    return True
