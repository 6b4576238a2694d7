"""A store's tail of a shared log, and its reload when the tail is lost.

The tail (DESIGN rule 4): ONE reader of the log per gateway brings every commit in, in log
order, this gateway's own included. Ours were applied when they committed, so their revisions
(and, counted, their lease changes) are skipped here.

A tail that ends, whatever the reason, is not started again from where it stopped: a tail that
raised TailLost cannot go on without a gap (revisions this gateway never read were compacted
away, or the feed skipped some), and a tail that failed otherwise (a bug, a record it could not
apply) may have left half an entry applied or lease changes unread. Either way the store reloads
in process, the way it loaded at start:

1. WARNING ``tail lost (<why>): reloading from revision N`` (N: the replica's revision), once
   per reload, and ``Follower.reloads`` counts it (the ``etcdgw_store_reloads_total`` metric);
2. the pipeline's gate is taken (``Store._gate``): the batch being committed finishes first and
   no other is evaluated, committed or applied until the reload is in place, so no write
   interleaves with the load;
3. ``backend.load()`` again (the Cosmos backend takes a new change-feed position before its
   reads, as at start), and a fresh replica is built from it;
4. in one synchronous step (nothing else runs in between, so no request sees half of it):
   the replica object takes the new state (``Replica.assume``: the watch hub and every reader
   hold that same object), the lease table takes the new lease records keeping the deadline of
   every lease it already had (``LeaseTable.replace``: a reload never expires a lease early),
   the position becomes the load's, the reload listeners run (the watch hub: watchers waiting
   for revisions the tail never delivered catch up from the reloaded history, or are cancelled
   with ``compact_revision`` if it no longer reaches back to them), then the compaction
   listeners if the compaction point moved, and whoever waits for the replica to move on is
   woken;
5. a new tail starts from the loaded revision.

A load that fails is tried again after a delay doubling from RELOAD_BACKOFF up to
RELOAD_BACKOFF_MAX, each failure logged; the gate is free between attempts. While the replica
trails the log, serializable reads are served from it (stale, as etcd's may be), and anything
that needs the log's head (linearizable reads, writes, the read barrier) waits for it at most
CATCH_UP_TIMEOUT and then fails UNAVAILABLE ``etcdserver: request timed out``, as during any
other outage; none of that lasts past the reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from etcdgw.backends.base import Committed, Loaded, SharedBackend, TailLost
from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.replica import Replica

if TYPE_CHECKING:
    from etcdgw.store import Store

__all__ = ["RELOAD_BACKOFF", "RELOAD_BACKOFF_MAX", "Follower", "replica_from"]

log = logging.getLogger(__name__)

#: The first delay before a failed reload is tried again; it doubles up to the maximum.
RELOAD_BACKOFF = 0.2
RELOAD_BACKOFF_MAX = 5.0

_EVERY_KEY = KeyRange.of(b"\x00", b"\x00")


def replica_from(loaded: Loaded) -> Replica:
    """A replica holding what ``loaded`` holds (at start and at every reload)."""
    replica = Replica()
    for rev, changes in loaded.revisions:
        replica.apply(rev, changes)
    replica.set_revision(loaded.rev, loaded.compact_rev)
    if loaded.compact_rev > 0:
        replica.compact(loaded.compact_rev)
    return replica


class Follower:
    """The tail task of a store on a shared log (``Store.open`` starts it)."""

    def __init__(self, store: Store, backend: SharedBackend) -> None:
        self.store = store
        self.backend = backend
        self.reloads = 0  # tails lost, each followed by a reload
        self.reload_failures = 0  # reload attempts that failed (and were tried again)
        self.reloading = False

    async def run(self, after: int) -> None:
        """Follow the log from revision ``after``; reload whenever a tail ends."""
        while True:
            entries = self.backend.tail(after)
            try:
                try:
                    async for entry in entries:
                        self.apply(entry)
                finally:  # the backend's one reader is free again once this one is closed
                    aclose = getattr(entries, "aclose", None)
                    if aclose is not None:
                        await aclose()
                return  # the backend ended the tail (closed)
            except asyncio.CancelledError:
                raise
            except TailLost as e:
                why = str(e)
            except Exception as e:
                log.exception("following the log failed at revision %d", self.store.replica.rev)
                why = f"{type(e).__name__}: {e}"
            after = await self.reload(why)

    def apply(self, entry: Committed) -> None:
        store = self.store
        replica = store.replica
        leases = store.leases
        echo = store._echo
        now = store.clock()
        theirs = []
        for change in entry.leases:
            if echo[change] > 0:  # ours, applied at commit time
                echo[change] -= 1
            else:
                theirs.append(change)
        # Grants first: a revision of the same commit may attach keys to them.
        for lease_id, ttl in theirs:
            if ttl is not None and lease_id not in leases:
                leases.grant(lease_id, ttl, now)
        for rev, changes in entry.revisions:
            if rev <= replica.rev:
                continue
            if rev != replica.rev + 1:
                raise TailLost(f"the log skipped from revision {replica.rev} to {rev}")
            replica.apply(rev, changes)
            leases.apply(changes)
            for listener in store.listeners:
                listener(rev, changes)
        for lease_id, ttl in theirs:
            if ttl is None:
                leases.revoke(lease_id)
        if entry.lease_seq is not None and entry.lease_seq > store._lease_seq:
            store._lease_seq = entry.lease_seq
        if entry.compact_rev is not None and entry.compact_rev > replica.compact_rev:
            store._apply_compaction(entry.compact_rev)
        store._advance()

    # -- reload ------------------------------------------------------------------------------

    async def reload(self, why: str) -> int:
        """Load the log again until that works (backoff between attempts); the revision
        loaded, where the next tail starts."""
        log.warning("tail lost (%s): reloading from revision %d", why, self.store.replica.rev)
        self.reloads += 1
        self.reloading = True
        delay = RELOAD_BACKOFF
        try:
            while True:
                try:
                    return await self._reload_once()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.reload_failures += 1
                    log.warning("reload failed (%s: %s); trying again in %.1f s",
                                type(e).__name__, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RELOAD_BACKOFF_MAX)
        finally:
            self.reloading = False

    async def _reload_once(self) -> int:
        store = self.store
        started = time.perf_counter()
        async with store._gate:  # no batch is evaluated, committed or applied meanwhile
            loaded = await self.backend.load()
            fresh = replica_from(loaded)
            before = store.replica.rev
            self._install(loaded, fresh)
        log.info("reloaded in %.2f s: revision %d (was %d), compact revision %d, %d keys, "
                 "%d leases", time.perf_counter() - started, fresh.rev, before,
                 fresh.compact_rev, len(store.replica), len(store.leases))
        return loaded.rev

    def _install(self, loaded: Loaded, fresh: Replica) -> None:
        """The reload's state in place of the old, in one synchronous step."""
        store = self.store
        replica = store.replica
        if fresh.rev < replica.rev or loaded.lease_seq < store._lease_seq:
            # The log only grows: a load behind what this gateway applied is not the log.
            raise RuntimeError(
                f"the reloaded log is at {(fresh.rev, loaded.lease_seq)}, behind this "
                f"gateway's {(replica.rev, store._lease_seq)}")
        old_compact, seen_lseq = replica.compact_rev, store._lease_seq
        granted = loaded.lease_granted or {}
        replica.assume(fresh)
        store.leases.replace(loaded.leases, store.clock(),
                             lambda lease_id: granted.get(lease_id, 0) <= seen_lseq)
        store.leases.apply(v for v in replica.range(_EVERY_KEY, replica.rev) if v.lease)
        store._lease_seq = loaded.lease_seq
        # Our commits all returned before the load (the gate), and the new tail starts at a
        # feed position taken before it: none of them comes back to be skipped.
        store._echo.clear()
        for on_reload in store.reload_listeners:
            on_reload()
        if replica.compact_rev > old_compact:
            for on_compact in store.compaction_listeners:
                on_compact(replica.compact_rev)
        store._advance()
