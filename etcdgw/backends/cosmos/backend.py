"""The Cosmos DB backend: a SharedBackend over one container (DESIGN "Backends / cosmos").

Document model: model.py. Request layer (retries, error mapping): client.py. Tail: tail.py.

Commit protocol (DESIGN rule 3)
    Common case, ONE transactional batch: create the rev documents, upsert the key and lease
    documents, and replace ``meta`` LAST with If-Match on the etag last read or written (so
    that a change feed page boundary can only fall before meta, never after it). A 412 on meta
    means another writer went first: meta is read again; a different revision is a
    CommitConflict, the same revision (meta was only touched) is retried.

    Too large for one batch (more than ``max_batch_ops`` operations or ``max_batch_bytes``):
    1. claim: replace meta (If-Match) with ``lock = {id, from, to, until, phase: writing}``; the
       revision does not move, so readers see nothing yet;
    2. create the rev documents in as many batches as needed;
    3. commit point: one batch with the lease documents, the key documents that fit and meta
       (If-Match on the claim's etag): ``rev`` = the new revision, lock phase ``indexing``;
    4. upsert the remaining key documents, then release the lock.
    Other writers wait while meta is locked (their commits are conditional on meta anyway). A
    lock older than ``lock_ttl`` is taken over: in phase ``writing`` the claim is cancelled and
    its rev documents deleted; in phase ``indexing`` the key documents are rebuilt from its rev
    documents and the lock released. A writer whose final meta write finds its lock gone
    deletes its rev documents and raises CommitConflict.

    A single revision whose rev document cannot fit in one batch raises RequestTooLarge.

Lost responses (timeouts, connection loss, 408/5xx on a write): the outcome is resolved before
``commit`` returns: read meta; the commit happened iff its batch id is in ``meta.recent`` (or
the rev document at ``expected + 1`` carries it). If meta still has the etag the lost batch was
conditional on, meta is rewritten with that etag first (a fence): after that the lost batch can
never apply, and the commit is retried with the new etag.

Readers: ``load`` and the tail use rev documents up to ``meta.rev`` only; the key documents are
an index of each key's latest version (for compaction and future direct reads), never needed to
rebuild a replica. Physical compaction at C deletes a rev document below C only once every
change in it is unreachable at C (superseded at or below C, or a tombstone); a document with
at least one live change is kept whole, so every rev document that exists is complete, and
``load`` returns every version a compacted replica keeps (plus superseded ones in the same
documents, which ``Replica.compact`` drops, as after the embedded backend's load).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError

from etcdgw.backends.base import (
    BackendError,
    CommitConflict,
    Committed,
    LeaseChange,
    Loaded,
    LogPosition,
    RequestTooLarge,
    Revision,
)
from etcdgw.backends.cosmos import leases as lease_docs
from etcdgw.backends.cosmos import model as m
from etcdgw.backends.cosmos.client import Container, OutcomeUnknown
from etcdgw.backends.cosmos.settings import CosmosSettings

__all__ = ["CosmosBackend"]

log = logging.getLogger(__name__)
Doc = dict[str, Any]

ATTEMPTS = 8
DELETE_CHUNK = 100


def _random_id() -> int:
    return secrets.randbits(63) or 1


class _Orphans(Exception):
    """A create hit an existing document (an orphan of an abandoned commit)."""


class CosmosBackend:
    def __init__(self, settings: CosmosSettings, *, transport: Any = None) -> None:
        self.s = settings
        self._poke = asyncio.Event()
        self.c = Container(settings, transport=transport)
        self._meta: Doc | None = None
        self._opened = False
        self._closed = False
        self._feed_token: str | None = None  # change feed position taken before load's reads
        # (rev, compact_rev, lease_seq) that load returned
        self._loaded: tuple[int, int, int] | None = None
        self._tail_started = False
        self._compact_lock = asyncio.Lock()
        self._bytes = 0
        # commit() calls started and returned: the tail yields nothing of a commit of ours
        # before that commit has returned (see own_commits_returned).
        self._commits_started = 0
        self._commits_returned = 0
        self._commit_returned = asyncio.Event()

    def __repr__(self) -> str:
        return (f"CosmosBackend(endpoint={self.s.endpoint!r}, database={self.s.database!r}, "
                f"container={self.s.container!r})")

    @property
    def requests(self) -> int:
        """Requests sent to Cosmos so far (the local test server charges 1 RU for each)."""
        return self.c.requests

    async def _open(self) -> None:
        if self._closed:
            raise BackendError("cosmos: backend is closed")
        if not self._opened:
            await self.c.open()
            self._opened = True

    # -- meta ------------------------------------------------------------------------------

    async def _read_meta(self) -> Doc:
        meta = await self.c.read(m.META_ID)
        if meta is None:
            raise BackendError("cosmos: the meta document is missing")
        self._meta = meta
        return meta

    async def _meta_at(self, expected: int, lseq: int) -> Doc:
        """Meta at position (``expected``, ``lseq``), unlocked (waiting out or taking over a
        lock). Anywhere else is a CommitConflict: another gateway committed revisions, or lease
        changes (which move only the lease sequence), that the batch was not evaluated on."""
        meta = self._meta
        if (meta is None or meta["rev"] != expected or m.lease_seq(meta) != lseq
                or meta.get("lock")):
            meta = await self._read_meta()
        while True:
            at = LogPosition(int(meta["rev"]), m.lease_seq(meta))
            if at != (expected, lseq):
                raise CommitConflict(f"log is at {tuple(at)}, not {(expected, lseq)}", at)
            if not meta.get("lock"):
                return meta
            meta = await self._wait_lock(meta)

    async def committed_position(self) -> LogPosition:
        await self._open()
        meta = await self._read_meta()
        return LogPosition(int(meta["rev"]), m.lease_seq(meta))

    # -- load ------------------------------------------------------------------------------

    async def load(self) -> Loaded:
        await self._open()
        from etcdgw.backends.cosmos.tail import feed_token_now

        # The feed position first: the tail then sees every write after this point.
        self._feed_token = await feed_token_now(self)
        meta = await self.c.read(m.META_ID)
        if meta is None:
            try:
                meta = await self.c.call("create meta", lambda: self.c.raw.create_item(
                    m.new_meta(_random_id(), _random_id())))
            except CosmosHttpResponseError as e:
                if e.status_code != 409:
                    raise self.c.error("create meta", e) from None
                meta = await self._read_meta()
        assert meta is not None
        self._meta = meta
        rows = await self.rev_docs(after=0, upto=int(meta["rev"]))
        leases = await self.c.query(
            "SELECT * FROM c WHERE c.pk = @pk AND c.type = 'lease'")
        self._bytes = sum(m.op_size(d) for d in rows) + 1024
        self._loaded = (int(meta["rev"]), int(meta["compact_rev"]), m.lease_seq(meta))
        return Loaded(
            cluster_id=int(meta["cluster_id"]),
            member_id=int(meta["member_id"]),
            rev=int(meta["rev"]),
            compact_rev=int(meta["compact_rev"]),
            revisions=(m.decode_revision(d) for d in rows),
            leases=[(int(d["lease"]), int(d["ttl"])) for d in leases if not d.get("revoked")],
            lease_seq=m.lease_seq(meta),
            lease_granted={int(d["lease"]): int(d.get("lseq", 0)) for d in leases
                           if not d.get("revoked")},
        )

    async def rev_docs(self, after: int, upto: int | None = None) -> list[Doc]:
        """Rev documents with ``after < rev (<= upto)``, ascending, paged by revision."""
        out: list[Doc] = []
        while True:
            cond = "" if upto is None else " AND c.rev <= @upto"
            params: dict[str, Any] = {"after": after}
            if upto is not None:
                params["upto"] = upto
            page = await self.c.query(
                "SELECT TOP 100 * FROM c WHERE c.pk = @pk AND c.type = 'rev' AND c.rev > @after"
                + cond + " ORDER BY c.rev", **params)
            out += page
            if len(page) < 100:
                return out
            after = int(page[-1]["rev"])

    # -- commit ----------------------------------------------------------------------------

    async def commit(
        self,
        expected_rev: int,
        revisions: list[Revision],
        compact_rev: int | None,
        leases: Sequence[LeaseChange] = (),
        *,
        expected_lease_seq: int = 0,
    ) -> None:
        self._commits_started += 1
        try:
            await self._commit(expected_rev, expected_lease_seq, revisions, compact_rev, leases)
        finally:
            self._commits_returned += 1
            self._commit_returned.set()
            self._commit_returned = asyncio.Event()

    async def own_commits_returned(self) -> None:
        """Wait until every commit() of this backend started so far has returned.

        The tail calls it before yielding what it read: the store applies its own commits
        when commit() returns and skips them in the tail, so the tail must never bring in a
        commit of ours first (with a split commit, steps 3-4 leave plenty of time for that).
        Commits started later are not waited for: what the tail read before cannot hold them.
        """
        target = self._commits_started
        while self._commits_returned < target:
            await self._commit_returned.wait()

    async def _commit(self, expected_rev: int, lseq: int, revisions: list[Revision],
                      compact_rev: int | None, leases: Sequence[LeaseChange]) -> None:
        await self._open()
        for i, (rev, _) in enumerate(revisions):
            if rev != expected_rev + 1 + i:
                raise ValueError(f"revision {rev} does not continue {expected_rev + i}")
        batch = uuid.uuid4().hex[:16]
        new_rev = revisions[-1][0] if revisions else expected_rev
        rev_docs = [m.rev_doc(r, ch, batch, expected_rev + 1, new_rev) for r, ch in revisions]
        for d in rev_docs:
            if m.op_size(d) + 4096 > self.s.max_batch_bytes:
                raise RequestTooLarge(
                    f"cosmos: revision {d['rev']} needs {m.op_size(d)} bytes, more than one "
                    f"transactional batch holds ({self.s.max_batch_bytes})", rev=d["rev"])
        key_docs = [m.key_doc(v) for v in m.latest_per_key(revisions).values()]
        lease_docs = [m.lease_doc(i, ttl, new_rev, batch, lseq + 1)
                      for i, ttl in m.latest_per_lease(leases).items()]
        ops: list[tuple[Any, ...]] = [("create", (d,)) for d in rev_docs]
        ops += [("upsert", (d,)) for d in key_docs + lease_docs]
        size = sum(m.op_size(d) for d in rev_docs + key_docs + lease_docs) + 4096
        if len(ops) + 1 <= self.s.max_batch_ops and size <= self.s.max_batch_bytes:
            await self._commit_one(expected_rev, lseq, new_rev, compact_rev, batch, ops,
                                   bool(rev_docs), bool(lease_docs))
        else:
            await self._commit_split(expected_rev, lseq, new_rev, compact_rev, batch, rev_docs,
                                     key_docs, lease_docs)
        self._bytes += size

    async def _commit_one(self, expected: int, lseq: int, new_rev: int,
                          compact_rev: int | None, batch: str, ops: list[tuple[Any, ...]],
                          has_revs: bool, has_leases: bool) -> None:
        async def applied(meta: Doc) -> bool:
            if batch in meta.get("recent", ()):
                return True
            if has_revs and meta["rev"] > expected:  # recent may have rotated it out
                d = await self.c.read(m.rev_id(expected + 1))
                return d is not None and d.get("batch") == batch
            return False

        for _ in range(ATTEMPTS):
            meta = await self._meta_at(expected, lseq)
            body = m.next_meta(meta, rev=new_rev, compact_rev=compact_rev, batch=batch, lock=None,
                               leases=has_leases)
            try:
                if await self._meta_batch(ops, meta, body, applied) is not None:
                    return
            except _Orphans:
                await self._clear_orphans()
        raise BackendError(f"cosmos: commit at revision {expected} did not settle")

    async def _meta_batch(self, ops: list[tuple[Any, ...]], meta: Doc, body: Doc,
                          applied: Callable[[Doc], Awaitable[bool]]) -> Doc | None:
        """Run ``ops`` + replace meta (If-Match ``meta``'s etag) as one batch. The new meta, or
        None when meta had moved (412) or the batch was lost and is now fenced off."""
        all_ops = [*ops, ("replace", (m.META_ID, body), {"if_match_etag": meta["_etag"]})]
        try:
            res = await self.c.batch(all_ops, "commit")
        except CosmosBatchOperationError as e:
            index = e.error_index if e.error_index is not None else -1
            responses = e.operation_responses or []
            status = responses[index].get("statusCode") if 0 <= index < len(responses) else None
            if index == len(ops) and status == 412:
                self._meta = None
                return None
            if status == 409:
                raise _Orphans from None
            raise self.c.error("commit", e) from None
        except OutcomeUnknown as e:
            log.warning("%s; resolving the commit's outcome", e.__cause__ or e)
            return await self._resolve(meta["_etag"], applied)
        new_meta: Doc = res[-1]["resourceBody"]
        self._meta = new_meta
        return new_meta

    async def _resolve(self, etag: str, applied: Callable[[Doc], Awaitable[bool]]) -> Doc | None:
        """After a lost batch response: the meta it produced if it was applied; None if it
        was not, and can no longer be (fenced)."""
        from azure.core import MatchConditions

        for _ in range(ATTEMPTS):
            meta = await self._read_meta()
            if await applied(meta):
                return meta
            if meta["_etag"] != etag:
                return None  # meta moved on without it: the batch can never apply now
            body = m.meta_body(meta)
            body["seq"] = int(body.get("seq", 0)) + 1
            def fence(body: Doc = body) -> Awaitable[Doc]:
                return self.c.raw.replace_item(  # type: ignore[no-any-return]
                    m.META_ID, body, etag=etag, match_condition=MatchConditions.IfNotModified)

            try:
                self._meta = await self.c.call("fence meta", fence, write=True)
                return None
            except (OutcomeUnknown, CosmosHttpResponseError):
                continue  # read again and decide
        raise BackendError("cosmos: the outcome of a commit could not be resolved")

    async def _clear_orphans(self) -> None:
        """Delete rev documents above meta.rev that no commit in progress owns."""
        meta = self._meta or await self._read_meta()
        docs = await self.c.query(
            "SELECT c.id, c.rev, c.batch, c._etag FROM c WHERE c.pk = @pk AND c.type = 'rev' "
            "AND c.rev > @r", r=meta["rev"])
        meta = await self._read_meta()  # after the query: a doc above it is not committed
        owner = (meta.get("lock") or {}).get("id")
        for d in docs:
            if d["rev"] > meta["rev"] and d.get("batch") != owner:
                log.warning("deleting orphan rev document %s of batch %s", d["id"], d["batch"])
                await self.c.delete(d["id"], d["_etag"])
        self._meta = None

    # -- split commits ---------------------------------------------------------------------

    def _chunks(self, docs: list[Doc], room_ops: int, room_bytes: int) -> Iterator[list[Doc]]:
        chunk: list[Doc] = []
        size = 0
        for d in docs:
            n = m.op_size(d)
            if chunk and (len(chunk) + 1 > room_ops or size + n > room_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(d)
            size += n
        if chunk:
            yield chunk

    async def _commit_split(self, expected: int, lseq: int, new_rev: int,
                            compact_rev: int | None,
                            batch: str, rev_docs: list[Doc], key_docs: list[Doc],
                            lease_docs: list[Doc]) -> None:
        def lock(phase: str) -> Doc:
            return {"id": batch, "from": expected + 1, "to": new_rev, "phase": phase,
                    "until": time.time() + self.s.lock_ttl}

        async def claimed(meta: Doc) -> bool:
            return (meta.get("lock") or {}).get("id") == batch

        # 1. claim
        meta: Doc | None = None
        for _ in range(ATTEMPTS):
            cur = await self._meta_at(expected, lseq)
            body = m.next_meta(cur, rev=expected, compact_rev=None, batch=None,
                               lock=lock("writing"))
            meta = await self._meta_batch([], cur, body, claimed)
            if meta is not None:
                break
        if meta is None:
            raise BackendError("cosmos: could not claim the log for a large commit")
        # 2. the rev documents
        try:
            for chunk in self._chunks(rev_docs, self.s.max_batch_ops, self.s.max_batch_bytes):
                await self._create_chunk(chunk, batch)
        except BaseException:
            await self._abandon(batch, expected, new_rev)
            raise
        # 3. commit point: meta (+ leases and the key documents that fit)
        room_ops = self.s.max_batch_ops - 1 - len(lease_docs)
        room_bytes = self.s.max_batch_bytes - 4096 - sum(m.op_size(d) for d in lease_docs)
        first = next(self._chunks(key_docs, room_ops, room_bytes), []) if room_ops > 0 else []
        first = first if len(first) <= room_ops else []
        ops = [("upsert", (d,)) for d in lease_docs + first]

        async def committed(meta: Doc) -> bool:
            return batch in meta.get("recent", ())

        body = m.next_meta(meta, rev=new_rev, compact_rev=compact_rev, batch=batch,
                           lock=lock("indexing"), leases=bool(lease_docs))
        try:
            final = await self._meta_batch(ops, meta, body, committed)
        except _Orphans:
            final = None
        if final is None:  # the claim was taken over
            await self._abandon(batch, expected, new_rev)
            raise CommitConflict("cosmos: a large commit lost its claim on the log")
        # 4. the other key documents, then release
        await self._upsert_all(key_docs[len(first):])
        await self._release(final, batch)

    async def _create_chunk(self, chunk: list[Doc], batch: str) -> None:
        ops: list[tuple[Any, ...]] = [("create", (d,)) for d in chunk]
        for _ in range(ATTEMPTS):
            try:
                await self.c.batch(ops, "write revisions")
                return
            except CosmosBatchOperationError:
                pass  # 409: ours (a lost response) or an orphan
            except OutcomeUnknown:
                pass
            d = await self.c.read(chunk[0]["id"])
            if d is not None and d.get("batch") == batch:
                return
            if d is not None:
                await self._clear_orphans()
        raise BackendError("cosmos: could not write the revisions of a large commit")

    async def _upsert_all(self, docs: list[Doc]) -> None:
        for chunk in self._chunks(docs, self.s.max_batch_ops, self.s.max_batch_bytes):
            ops: list[tuple[Any, ...]] = [("upsert", (d,)) for d in chunk]
            for attempt in range(ATTEMPTS):
                try:
                    await self.c.batch(ops, "write key documents")
                    break
                except OutcomeUnknown:  # upserts are idempotent: write them again
                    if attempt == ATTEMPTS - 1:
                        raise BackendError("cosmos: could not write key documents") from None

    async def _release(self, meta: Doc, batch: str) -> None:
        async def released(cur: Doc) -> bool:
            return (cur.get("lock") or {}).get("id") != batch

        for _ in range(ATTEMPTS):
            body = m.next_meta(meta, rev=int(meta["rev"]), compact_rev=None, batch=None,
                               lock=None)
            if await self._meta_batch([], meta, body, released) is not None:
                return
            meta = await self._read_meta()
            if await released(meta):
                return

    async def _abandon(self, batch: str, expected: int, new_rev: int) -> None:
        """Best effort: delete the rev documents of a large commit that will not happen."""
        try:
            docs = await self.c.query(
                "SELECT c.id, c.rev, c.batch, c._etag FROM c WHERE c.pk = @pk AND "
                "c.type = 'rev' AND c.rev > @a AND c.rev <= @b", a=expected, b=new_rev)
            for d in docs:
                if d.get("batch") == batch:
                    await self.c.delete(d["id"], d["_etag"])
        except BackendError as e:
            log.warning("could not clean up an abandoned commit (the next writer will): %s", e)

    async def _wait_lock(self, meta: Doc) -> Doc:
        """Wait while another writer holds meta's lock; take it over once it has expired."""
        lock = meta["lock"]
        while True:
            if time.time() > float(lock["until"]):
                await self._take_over(meta)
                return await self._read_meta()
            await asyncio.sleep(self.s.poll_interval)
            meta = await self._read_meta()
            if (meta.get("lock") or {}).get("id") != lock["id"]:
                return meta

    async def _take_over(self, meta: Doc) -> None:
        lock = meta["lock"]
        log.warning("taking over the expired lock of commit %s (phase %s)", lock["id"],
                    lock["phase"])
        if lock["phase"] == "indexing":
            docs = [d for d in await self.rev_docs(int(lock["from"]) - 1, int(lock["to"]))
                    if d.get("batch") == lock["id"]]
            keys = m.latest_per_key(m.decode_revision(d) for d in docs)
            await self._upsert_all([m.key_doc(v) for v in keys.values()])
        body = m.next_meta(meta, rev=int(meta["rev"]), compact_rev=None, batch=None, lock=None)

        async def gone(cur: Doc) -> bool:
            return bool((cur.get("lock") or {}).get("id") != lock["id"])

        if await self._meta_batch([], meta, body, gone) is None:
            return
        if lock["phase"] == "writing":
            await self._abandon(lock["id"], int(lock["from"]) - 1, int(lock["to"]))

    # -- tail ------------------------------------------------------------------------------

    def tail(self, after_rev: int) -> AsyncIterator[Committed]:
        """The change-feed reader from ``after_rev`` (tail.py). One at a time: the next may
        start once this one has ended (TailLost) or been closed (``aclose``); a reload calls
        ``load`` again first, and a tail from the revision it returned starts at the feed
        position taken before that load's reads."""
        if self._tail_started:
            raise BackendError("cosmos: one change-feed reader per backend")
        self._tail_started = True
        from etcdgw.backends.cosmos.tail import follow

        token = None
        if self._loaded is not None and self._loaded[0] == after_rev:
            token = self._feed_token
        compact = self._loaded[1] if self._loaded is not None else -1
        lseq = self._loaded[2] if self._loaded is not None else 0
        return self._one_reader(follow(self, after_rev, token, compact, lseq))

    async def _one_reader(self, entries: AsyncIterator[Committed]) -> AsyncIterator[Committed]:
        try:
            async for entry in entries:
                yield entry
        finally:
            self._tail_started = False
            aclose = getattr(entries, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- compaction ------------------------------------------------------------------------

    async def compact(self, rev: int) -> None:
        """Delete what compaction at ``rev`` made unreachable: rev documents below ``rev``
        whose every change is superseded at or below ``rev`` (or a tombstone), key documents
        holding a tombstone at or below ``rev``, revoked lease documents. In batches of at most
        100 deletes; a document that changed meanwhile (etag) is left for the next time."""
        await self._open()
        async with self._compact_lock:
            docs = await self.rev_docs(after=0, upto=rev)
            last: dict[bytes, tuple[int, bool]] = {}
            for d in docs:
                r, changes = m.decode_revision(d)
                for v in changes:
                    last[v.key] = (r, v.version == 0)
            dead: list[Doc] = []
            for d in docs:
                r, changes = m.decode_revision(d)
                if r >= rev:
                    continue
                if all(r < last[v.key][0] or (r == last[v.key][0] and last[v.key][1])
                       for v in changes):
                    dead.append(d)
            others = await self.c.query(
                "SELECT c.id, c.type, c.rev, c.version, c.revoked, c._etag FROM c "
                "WHERE c.pk = @pk AND (c.type = 'key' OR c.type = 'lease') AND c.rev <= @r",
                r=rev)
            dead += [d for d in others if (d["type"] == "key" and d.get("version") == 0)
                     or (d["type"] == "lease" and d.get("revoked"))]
            for i in range(0, len(dead), DELETE_CHUNK):
                await self._delete_chunk(dead[i:i + DELETE_CHUNK])
                self._bytes = max(self._bytes - sum(m.op_size(d) for d in dead[i:i + DELETE_CHUNK]
                                                    if d.get("type") == "rev"), 1024)
            log.info("cosmos compaction at %d: %d documents deleted", rev, len(dead))

    async def _delete_chunk(self, docs: list[Doc]) -> None:
        ops: list[tuple[Any, ...]] = [
            ("delete", (d["id"],), {"if_match_etag": d["_etag"]}) for d in docs]
        try:
            await self.c.batch(ops, "compact")
            return
        except (CosmosBatchOperationError, OutcomeUnknown):
            pass  # one document changed or was already gone: one by one
        for d in docs:
            await self.c.delete(d["id"], d["_etag"])

    # -- members (MemberList) --------------------------------------------------------------

    async def heartbeat(self, member_id: int, name: str, client_urls: Sequence[str]) -> None:
        await self._open()
        await self.c.upsert(m.member_doc(member_id, name, client_urls, time.time()))

    async def members(self) -> list[Doc]:
        await self._open()
        return await self.c.query("SELECT * FROM c WHERE c.pk = @pk AND c.type = 'member'")

    # -- leases across gateways (etcdgw.lease.manager's SharedLeases) -----------------------

    def poke(self) -> None:
        """Read the change feed now rather than at the next poll: the store lost a commit to
        another gateway and waits for the tail to bring that gateway's revisions in."""
        self._poke.set()

    async def poked(self, at_most: float) -> None:
        """The tail's idle wait: ``at_most`` seconds, or less if poked."""
        try:
            async with asyncio.timeout(at_most):  # (3.11's wait_for can swallow a cancel)
                await self._poke.wait()
        except TimeoutError:
            pass
        self._poke.clear()

    async def claim_lease_owner(self, member_id: int, ttl: float, now: float) -> bool:
        await self._open()
        return await lease_docs.claim_owner(self.c, member_id, ttl, now)

    async def save_renewals(self, member_id: int, renewals: dict[int, int],
                            changed: set[int]) -> None:
        await self._open()
        await lease_docs.save_renewals(self.c, member_id, renewals, changed)

    async def load_renewals(self) -> dict[tuple[int, int], int]:
        await self._open()
        return await lease_docs.load_renewals(self.c)

    # -- size and close --------------------------------------------------------------------

    def size(self) -> tuple[int, int]:
        """An estimate: bytes of the documents this gateway loaded and wrote since."""
        n = max(self._bytes, 1024)
        return n, n

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.c.close()
