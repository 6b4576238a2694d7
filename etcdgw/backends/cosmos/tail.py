"""The change-feed reader: ONE per backend, yielding every commit in revision order, gap-free.

The feed (LatestVersion mode) reports each document's latest version once per write, in the
order of the writes. Rev documents are written once, so each appears once; meta appears after
every commit (it is the last operation of each commit batch), lease documents when granted or
revoked. What the reader keeps:

- ``buf``: rev documents not yet delivered, by revision (a later feed entry for the same
  revision replaces an earlier one: an orphan of an abandoned commit is replaced by the
  committed document before any meta confirms that revision);
- ``meta_seen``: the highest meta revision seen. Only revisions up to it are committed; a
  revision is delivered once it and every revision of its commit (``first``..``last``, one
  batch id) are buffered;
- lease changes, delivered with the commit that wrote them (their ``rev`` is the log revision
  after that commit) or alone once the log is past them; compactions, delivered once the tail
  has reached the meta revision that announced them;
- the lease sequence (``lseq``) of the latest meta the *feed* showed: once every revision up to
  that meta's is delivered, so is every lease document written before it (each batch writes
  meta last, and the feed keeps write order), and the tail reports that lease sequence
  (Committed.lease_seq) so that the store's read barrier knows its lease table is current. A
  meta read directly (the catch-up read at start) does not count: lease documents written
  before it may still be ahead in the feed.

A revision that meta confirms but the feed has not shown (the tail started late, or a page was
missed) is read back by range (``c.rev > @after ORDER BY c.rev``). If it is gone for good
(physical compaction deleted it before this reader saw it) the reader raises TailLost: the
gateway is too far behind, and its store reloads in process (etcdgw/follower.py), then starts a
new reader at the feed position its new load took.

Continuation: the SDK rewrites the ``etag`` of the response headers it passes to the
``response_hook`` into its continuation token; it is read from that dict after iterating
(cosmos-notes.md §5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from etcdgw.backends.base import BackendError, Committed, LeaseChange, Revision, TailLost
from etcdgw.backends.cosmos import model as m

if TYPE_CHECKING:
    from etcdgw.backends.cosmos.backend import CosmosBackend

__all__ = ["TailLost", "feed_token_now", "follow"]

log = logging.getLogger(__name__)
Doc = dict[str, Any]

PAGE = 100
#: Polls a confirmed revision may stay missing before the reader gives up (TailLost).
MISSING_POLLS = 100


async def _read_feed(b: CosmosBackend, **start: Any) -> tuple[list[Doc], str | None]:
    holder: dict[str, Any] = {}

    def hook(headers: Any, _: Any) -> None:
        holder["h"] = headers  # a reference: the SDK writes its continuation into it later

    async def run() -> list[Doc]:
        it = b.c.raw.query_items_change_feed(max_item_count=PAGE, response_hook=hook, **start)
        return [d async for d in it]

    docs = await b.c.call("change feed", run)
    headers = holder.get("h") or {}
    return docs, headers.get("etag")


async def feed_token_now(b: CosmosBackend) -> str:
    _, token = await _read_feed(b, start_time="Now")
    if not token:
        raise BackendError("cosmos: the change feed gave no continuation")
    return token


class _State:
    def __init__(self, after_rev: int, compact: int, lseq: int = 0) -> None:
        self.delivered = after_rev
        self.meta_seen = after_rev
        self.lseq_seen = lseq  # of the latest meta seen in the feed
        self.lseq_rev = after_rev  # that meta's revision
        self.lseq_emitted = lseq
        self.buf: dict[int, Doc] = {}
        self.leases: list[tuple[int, LeaseChange]] = []
        self.compact_emitted = compact
        self.compact_pending: tuple[int, int] | None = None  # (compact rev, meta rev)
        self.compact_seen = compact

    def see(self, d: Doc, *, from_feed: bool = True) -> None:
        t = d.get("type")
        if t == "rev":
            if int(d["rev"]) > self.delivered:
                self.buf[int(d["rev"])] = d
        elif t == "meta":
            self.meta_seen = max(self.meta_seen, int(d["rev"]))
            if from_feed and m.lease_seq(d) > self.lseq_seen:
                self.lseq_seen = m.lease_seq(d)
                self.lseq_rev = int(d["rev"])
            c = int(d.get("compact_rev", -1))
            self.compact_seen = max(self.compact_seen, c)
            if c > self.compact_emitted and (
                    self.compact_pending is None or c > self.compact_pending[0]):
                self.compact_pending = (c, int(d["rev"]))
        elif t == "lease":
            self.leases.append((int(d["rev"]), m.decode_lease(d)))

    def missing(self) -> bool:
        return self.delivered < self.meta_seen and not self._group_ready()

    def _group_ready(self) -> list[Doc] | None:
        first = self.buf.get(self.delivered + 1)
        if first is None:
            return None
        last = int(first["last"])
        if last > self.meta_seen:
            return None
        group = [self.buf.get(r) for r in range(self.delivered + 1, last + 1)]
        if any(d is None or d.get("batch") != first.get("batch") for d in group):
            return None
        return [d for d in group if d is not None]

    def _take_leases(self, upto: int) -> list[LeaseChange]:
        out = [change for rev, change in self.leases if rev <= upto]
        self.leases = [(rev, change) for rev, change in self.leases if rev > upto]
        return out

    def ready(self) -> list[Committed]:
        out: list[Committed] = []
        while self.delivered < self.meta_seen:
            group = self._group_ready()
            if group is None:
                break
            revisions: list[Revision] = [m.decode_revision(d) for d in group]
            for r, _ in revisions:
                del self.buf[r]
            self.delivered = revisions[-1][0]
            out.append(Committed(self.delivered, revisions,
                                 leases=self._take_leases(self.delivered)))
        leases = self._take_leases(self.delivered)
        if leases:
            out.append(Committed(self.delivered, [], leases=leases))
        p = self.compact_pending
        if p is not None and p[1] <= self.delivered:
            self.compact_pending = None
            if p[0] > self.compact_emitted:
                self.compact_emitted = p[0]
                out.append(Committed(self.delivered, [], compact_rev=p[0]))
        if self.lseq_seen > self.lseq_emitted and self.lseq_rev <= self.delivered:
            self.lseq_emitted = self.lseq_seen
            out.append(Committed(self.delivered, [], lease_seq=self.lseq_seen))
        return out


class _Outage:
    """Cosmos failing the tail's reads (after the request layer's own bounded retries): the
    tail waits and reads again, for as long as it takes. A tail that ends makes the store
    reload the whole log (etcdgw/follower.py), far dearer than reading on where it stopped,
    so a transient outage does not end it; meanwhile linearizable reads and writes fail
    UNAVAILABLE on their own. Only TailLost ends the tail."""

    MAX_DELAY = 1.0

    def __init__(self, b: CosmosBackend) -> None:
        self.b = b
        self.failures = 0
        self.since = 0.0

    async def wait(self, e: BackendError) -> None:
        if isinstance(e, TailLost):
            raise e
        if self.failures == 0:
            self.since = time.monotonic()
            log.warning("tail: %s; reading again until Cosmos answers", e)
        self.failures += 1
        await asyncio.sleep(min(self.b.s.poll_interval * 2.0 ** min(self.failures, 8),
                                self.MAX_DELAY))

    def over(self) -> None:
        if self.failures:
            log.warning("tail: Cosmos answers again after %.1f s", time.monotonic() - self.since)
            self.failures = 0


async def follow(b: CosmosBackend, after_rev: int, token: str | None,
                 compact: int, lseq: int = 0) -> AsyncIterator[Committed]:
    st = _State(after_rev, compact, lseq)
    outage = _Outage(b)
    while True:
        try:
            if token is None:
                token = await feed_token_now(b)  # before the catch-up read: nothing between
            st.see(await b._read_meta(), from_feed=False)
            for d in await b.rev_docs(after=st.delivered, upto=st.meta_seen):
                st.see(d)
            break
        except BackendError as e:
            await outage.wait(e)
    outage.over()
    misses = 0
    while True:
        entries = st.ready()
        if entries:
            await b.own_commits_returned()  # the store applies those first (see there)
        for entry in entries:
            yield entry
        try:
            docs, new_token = await _read_feed(b, continuation=token)
            token = new_token or token
            for d in docs:
                st.see(d)
            if st.missing():
                for d in await b.rev_docs(after=st.delivered, upto=st.meta_seen):
                    st.see(d)
        except BackendError as e:
            await outage.wait(e)
            continue
        outage.over()
        if st.missing():
            misses += 1
            if st.compact_seen > st.delivered or misses > MISSING_POLLS:
                raise TailLost(
                    f"cosmos: revision {st.delivered + 1} is gone from the log (compacted "
                    f"at {st.compact_seen}) before this gateway read it; reload")
        else:
            misses = 0
        if not docs:
            await b.poked(b.s.poll_interval)
