"""Leases across gateways on one container: the expiry owner and durable renewals.

Lease records (grant, revoke) are lease documents written by commits. Two more kinds of
document carry what several gateways need to expire leases correctly (DESIGN "leases"):

- ``owner``: which gateway expires leases now, until when (wall-clock seconds of the gateway
  that wrote it). Taken and renewed with an etag condition, so at most one gateway holds it; a
  gateway that stops renewing it loses it once ``deadline`` passes. Clock skew here only moves
  *who* expires leases, never *when*: expiry uses no wall clock (etcdgw.lease.manager).
- ``renew-<member>-<bucket>``: a gateway's renewal *counters*, ``leases: {id: n}``: n grows by
  one for every keepalive of that lease the gateway answered (and continues across restarts:
  the gateway starts from what its documents hold). No timestamps: the owner notes, on its own
  monotonic clock, when it first reads a changed counter, and counts the renewal from then. A
  gateway writes its counters (one upsert per changed document for every keepalive of a short
  window, concurrently) before it answers those keepalives, so a renewal the client saw is
  durable, and the owner, whatever gateway it is, sees it before expiring the lease.

Renewal documents are sharded so that none nears the 2 MB item limit: a lease goes to bucket
``mix(id) mod n`` (a 64-bit mix, so that ids chosen by clients spread too), n a power of two
that doubles once the gateway holds more than ``n * BUCKET_LEASES`` leases and halves once it
holds at most a quarter of that (documents of about 70 KB). Only documents whose leases
changed since the last flush are written: with few leases, one upsert per flush. When n
changes, leases move between documents in an order that never hides one from the owner's
query (:meth:`RenewalDocs.plan`); the first flush of a process also deletes what an earlier
layout of the same gateway left. The owner reads all of them with one query.

Neither kind appears in the revision log: the tail ignores them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from etcdgw.backends.cosmos.model import PK

if TYPE_CHECKING:
    from etcdgw.backends.cosmos.client import Container

__all__ = ["BUCKET_LEASES", "OWNER_ID", "RenewalDocs", "bucket_of", "claim_owner", "layout",
           "load_renewals", "save_renewals"]

OWNER_ID = "owner"
#: Leases per renewal document on average at most (an entry is ~33 bytes of JSON).
BUCKET_LEASES: Final = 2000
_M64 = (1 << 64) - 1
Doc = dict[str, Any]


async def claim_owner(c: Container, member_id: int, ttl: float, now: float) -> bool:
    """Become or stay the lease-expiry owner for ``ttl`` seconds from ``now`` (this gateway's
    wall clock); False if another gateway holds it (its deadline has not passed) or won a race
    for it."""
    from azure.core import MatchConditions
    from azure.cosmos.exceptions import CosmosHttpResponseError

    body = {"id": OWNER_ID, "pk": PK, "type": "owner", "owner": str(member_id),
            "deadline": now + ttl}
    doc = await c.read(OWNER_ID)
    try:
        if doc is None:
            await c.call("create owner", lambda: c.raw.create_item(body), write=True)
            return True
        if doc.get("owner") != str(member_id) and float(doc.get("deadline", 0)) > now:
            return False
        etag = doc["_etag"]
        await c.call("replace owner", lambda: c.raw.replace_item(
            OWNER_ID, body, etag=etag, match_condition=MatchConditions.IfNotModified),
            write=True)
        return True
    except CosmosHttpResponseError as e:
        if e.status_code in (409, 412):
            return False  # another gateway got there first
        raise


# -- renewal documents ---------------------------------------------------------------------


def bucket_of(lease_id: int, buckets: int) -> int:
    """The bucket of a lease among ``buckets`` (a power of two): splitmix64's finaliser, so
    that sequential or aligned ids spread evenly."""
    x = lease_id & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) & (buckets - 1)


def layout(count: int, current: int) -> int:
    """How many buckets ``count`` leases get, from ``current`` (0: none yet): doubled while
    over BUCKET_LEASES each on average, halved while at most a quarter of that (hysteresis:
    a count that moves around a boundary does not move the leases every flush)."""
    n = max(current, 1)
    while count > n * BUCKET_LEASES:
        n *= 2
    while n > 1 and count <= n * BUCKET_LEASES // 4:
        n //= 2
    return n


class RenewalDocs:
    """One gateway's renewal documents as this process knows them; plans the writes of a
    flush (pure: the I/O is :func:`save_renewals`)."""

    def __init__(self, member_id: int) -> None:
        self.member_id = member_id
        self.n = 0  # buckets of the current layout (0: none laid out yet)
        self.buckets: list[dict[int, int]] = []
        self.dirty: set[int] = set()  # buckets whose document is behind
        self.existing: set[str] | None = None  # ids in the container (None: not read yet)
        self.settled = 0  # buckets of the layout the documents in the container follow

    def doc_id(self, bucket: int) -> str:
        return f"renew-{self.member_id}-{bucket}"

    def found(self, ids: Collection[str]) -> None:
        """The renewal document ids in the container when this process first flushes: its own
        (``renew-<member>`` is the unsharded form of earlier releases) are kept."""
        mine = f"renew-{self.member_id}"
        self.existing = {i for i in ids if i == mine or i.startswith(mine + "-")}
        buckets = [int(i[len(mine) + 1:]) for i in self.existing
                   if i != mine and i[len(mine) + 1:].isdigit()]
        self.settled = max(buckets, default=-1) + 1

    def update(self, renewals: Mapping[int, int], changed: Collection[int]) -> None:
        """Take in the counters (every lease this gateway renewed, live ones only) after the
        leases in ``changed`` were renewed or dropped."""
        n = layout(len(renewals), self.n)
        if n != self.n:  # a new layout: every document is rewritten
            self.n = n
            self.buckets = [{} for _ in range(n)]
            for lease_id, count in renewals.items():
                self.buckets[bucket_of(lease_id, n)][lease_id] = count
            self.dirty = set(range(n))
            return
        for lease_id in changed:
            b = bucket_of(lease_id, n)
            value = renewals.get(lease_id)
            if value is None:
                self.buckets[b].pop(lease_id, None)
            else:
                self.buckets[b][lease_id] = value
            self.dirty.add(b)

    def doc(self, bucket: int) -> Doc:
        return {"id": self.doc_id(bucket), "pk": PK, "type": "renew",
                "member_id": str(self.member_id), "bucket": bucket, "buckets": self.n,
                "leases": {str(i): count for i, count in self.buckets[bucket].items()}}

    def plan(self) -> tuple[list[Doc], list[Doc], list[str]]:
        """What the next flush writes, in three steps each of which waits for the one before,
        so that no lease is ever missing from what the owner reads: when the layout grows,
        leases move from bucket b to buckets >= ``settled`` only, so those are written first;
        then the others; then the documents the layout does not have are deleted (when it
        shrinks, leases move into buckets that are all kept)."""
        docs = [self.doc(b) for b in sorted(self.dirty)]
        ids = {self.doc_id(b) for b in range(self.n)}
        return ([d for d in docs if d["bucket"] >= self.settled],
                [d for d in docs if d["bucket"] < self.settled],
                sorted((self.existing or set()) - ids))

    def written(self, doc: Doc) -> None:
        assert self.existing is not None
        self.existing.add(doc["id"])
        if doc["buckets"] == self.n:
            self.dirty.discard(doc["bucket"])

    def deleted(self, doc_id: str) -> None:
        assert self.existing is not None
        self.existing.discard(doc_id)

    def settle(self) -> None:
        """Every step of a plan was written: the container follows the current layout."""
        self.settled = self.n


class _Gateway:
    def __init__(self, member_id: int) -> None:
        self.docs = RenewalDocs(member_id)
        self.lock = asyncio.Lock()  # one flush at a time: a plan is written before the next


#: The renewal documents of each gateway (member id) per open container.
_gateways: weakref.WeakKeyDictionary[Container, dict[int, _Gateway]] = \
    weakref.WeakKeyDictionary()


async def save_renewals(c: Container, member_id: int, renewals: Mapping[int, int],
                        changed: Collection[int]) -> None:
    """Make this gateway's renewal counters durable: lease id -> keepalives answered, for
    every lease it renewed that is still live; ``changed``: the leases renewed or dropped since
    the last call that returned. Writes only the documents of those leases (and, when the
    layout changes, the others). Raises if any write failed (what failed is written again by
    the next call)."""
    gateway = _gateways.setdefault(c, {}).setdefault(member_id, _Gateway(member_id))
    async with gateway.lock:
        docs = gateway.docs
        if docs.existing is None:  # this process's first flush: what an earlier one left
            rows = await c.query("SELECT c.id FROM c WHERE c.pk = @pk AND c.type = 'renew'")
            docs.found([str(r["id"]) for r in rows])
        docs.update(renewals, changed)
        new, rewritten, stale = docs.plan()
        for step in (new, rewritten):
            await _all([(c.upsert(d), partial(docs.written, d)) for d in step])
        await _all([(c.delete(i), partial(docs.deleted, i)) for i in stale])
        docs.settle()


async def _all(calls: list[tuple[Awaitable[Any], Callable[[], None]]]) -> None:
    """Run the calls concurrently, note each that succeeded, then raise the first failure if
    any (the next step must not start after a failed one)."""
    results = await asyncio.gather(*(call for call, _ in calls), return_exceptions=True)
    failed: BaseException | None = None
    for (_, done), result in zip(calls, results, strict=True):
        if isinstance(result, BaseException):
            failed = failed or result
        else:
            done()
    if failed is not None:
        raise failed


async def load_renewals(c: Container) -> dict[tuple[int, int], int]:
    """Every gateway's renewal counters: (member id, lease id) -> counter, with one query over
    all renewal documents (a lease seen in two documents of one gateway while its layout
    changes: the larger counter)."""
    out: dict[tuple[int, int], int] = {}
    docs: list[dict[str, Any]] = await c.query(
        "SELECT * FROM c WHERE c.pk = @pk AND c.type = 'renew'")
    for doc in docs:
        member_id = int(doc["member_id"])
        for text, value in dict(doc.get("leases") or {}).items():
            # Earlier releases wrote wall-clock seconds: as milliseconds they still change
            # with every renewal, which is all the owner looks at.
            n = value if isinstance(value, int) else round(float(value) * 1000)
            key = (member_id, int(text))
            if n > out.get(key, -1):
                out[key] = n
    return out
