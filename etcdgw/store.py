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
import logging
from collections.abc import Callable
from typing import Any

from etcdgw import errors
from etcdgw.backends.base import Backend, BackendError
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
)
from etcdgw.wire import f_int, f_msg

__all__ = ["Store"]

log = logging.getLogger(__name__)

RAFT_TERM = 1  # there is no raft; a constant term >= 1 never decreases (H03)
MAX_BATCH = 512  # requests per group commit

ApplyListener = Callable[[int, list[Version]], None]


class _Queued:
    __slots__ = ("fut", "kind", "req")

    def __init__(self, kind: str, req: Any, fut: asyncio.Future[bytes]) -> None:
        self.kind = kind
        self.req = req
        self.fut = fut


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
        # Lease lookup; the lease manager replaces it (no leases exist before it does).
        self.lease_exists: Callable[[int], bool] = lambda _lease: False
        # Called with each durable revision, in order, after the replica has applied it.
        self.listeners: list[ApplyListener] = []
        # Called with the new compaction point once the replica has compacted.
        self.compaction_listeners: list[Callable[[int], None]] = []

    @classmethod
    async def open(cls, backend: Backend, *, max_txn_ops: int = 128) -> Store:
        loaded = await backend.load()
        replica = Replica()
        for rev, changes in loaded.revisions:
            replica.apply(rev, changes)
        replica.set_revision(loaded.rev, loaded.compact_rev)
        if loaded.compact_rev > 0:
            replica.compact(loaded.compact_rev)
        store = cls(backend, replica, loaded.cluster_id, loaded.member_id, max_txn_ops)
        store._pipeline = asyncio.create_task(store._run(), name="etcdgw-commit-pipeline")
        if loaded.compact_rev > 0:
            store._start_physical_compaction(loaded.compact_rev)
        log.info("store loaded: revision %d, compact revision %d, %d keys",
                 replica.rev, replica.compact_rev, len(replica))
        return store

    async def close(self) -> None:
        """Finish what is queued, then stop; the backend is closed by its owner."""
        if self._closing:
            return
        self._closing = True
        await self._queue.join()
        for task in (self._pipeline, self._compaction):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
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
        r = self.replica
        rev = read_revision(req.revision, r.rev, r.compact_rev)
        return execute_range(r, req, rev, self.header(r.rev))

    # -- writes ----------------------------------------------------------------------------

    async def put(self, req: Any) -> bytes:
        check_put_request(req)
        return await self._submit("put", req)

    async def delete_range(self, req: Any) -> bytes:
        check_delete_request(req)
        return await self._submit("delete", req)

    async def txn(self, req: Any) -> bytes:
        check_txn_request(req, self.max_txn_ops)
        if is_read_only(req):
            ov = Overlay(self.replica)
            return evaluate_txn(ov, req, self.lease_exists, self.header).response
        return await self._submit("txn", req)

    async def compact(self, req: Any) -> bytes:
        return await self._submit("compact", req)

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
        replica = self.replica
        ov = Overlay(replica)
        done: list[tuple[_Queued, bytes, Any]] = []  # (item, response, physical-compact rev)
        for item in batch:
            if item.fut.done():  # the caller went away before evaluation: never applied
                continue
            try:
                response, physical = self._evaluate(ov, item)
            except errors.EtcdError as e:
                item.fut.set_exception(e)
                continue
            done.append((item, response, physical))

        compact_rev = ov.compactions[-1] if ov.compactions else None
        if ov.revisions or compact_rev is not None:
            try:
                await self._backend.commit(replica.rev, ov.revisions, compact_rev)
            except BackendError as e:
                log.error("commit of revisions %d..%d failed: %s", replica.rev + 1, ov.rev, e)
                for item, _, _ in done:
                    if not item.fut.done():
                        item.fut.set_exception(errors.TIMEOUT)
                return
            # Durable: apply in revision order, then tell listeners (watch, leases).
            for rev, changes in ov.revisions:
                replica.apply(rev, changes)
                for listener in self.listeners:
                    listener(rev, changes)
            if compact_rev is not None:
                replica.compact(compact_rev)
                for on_compact in self.compaction_listeners:
                    on_compact(compact_rev)
                self._start_physical_compaction(compact_rev)

        for item, response, physical in done:
            if physical and self._compaction is not None:
                await asyncio.shield(self._compaction)
            if not item.fut.done():
                item.fut.set_result(response)

    def _evaluate(self, ov: Overlay, item: _Queued) -> tuple[bytes, bool]:
        req = item.req
        res: WriteResult
        if item.kind == "put":
            res = evaluate_put(ov, req, self.lease_exists, self.header)
        elif item.kind == "delete":
            res = evaluate_delete(ov, req, self.header)
        elif item.kind == "txn":
            res = evaluate_txn(ov, req, self.lease_exists, self.header)
        else:  # compact (C02, C03): does not create a revision
            if req.revision <= ov.compact_rev:
                raise errors.COMPACTED
            if req.revision > ov.rev:
                raise errors.FUTURE_REV
            ov.stage_compaction(req.revision)
            return f_msg(1, self.header(ov.rev)), bool(req.physical)
        if res.changes:
            ov.stage(res.rev, res.changes)
        return res.response, False

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
