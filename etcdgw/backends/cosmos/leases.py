"""Leases across gateways on one container: the expiry owner and durable renewals.

Lease records (grant, revoke) are lease documents written by commits. Two more kinds of
document carry what several gateways need to expire leases correctly (DESIGN "leases"):

- ``owner``: which gateway expires leases now, until when (wall-clock seconds). Taken and
  renewed with an etag condition, so at most one gateway holds it; a gateway that stops
  renewing it loses it once ``deadline`` passes.
- ``renew-<member>``: one per gateway, the wall-clock time of the last keepalive it answered
  for each lease. A gateway writes it (one upsert for every keepalive of a short window) before
  it answers those keepalives, so a renewal the client saw is durable, and the owner, whatever
  gateway it is, sees it before expiring the lease.

Neither kind appears in the revision log: the tail ignores them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from etcdgw.backends.cosmos.model import PK

if TYPE_CHECKING:
    from etcdgw.backends.cosmos.client import Container

__all__ = ["OWNER_ID", "claim_owner", "load_renewals", "save_renewals"]

OWNER_ID = "owner"


async def claim_owner(c: Container, member_id: int, ttl: float) -> bool:
    """Become or stay the lease-expiry owner for ``ttl`` seconds; False if another gateway
    holds it (its deadline has not passed) or won a race for it."""
    from azure.core import MatchConditions
    from azure.cosmos.exceptions import CosmosHttpResponseError

    now = time.time()
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


async def save_renewals(c: Container, member_id: int, renewals: dict[int, float]) -> None:
    """Replace this gateway's renewal document: lease id -> last keepalive (wall clock)."""
    await c.upsert({
        "id": f"renew-{member_id}", "pk": PK, "type": "renew", "member_id": str(member_id),
        "leases": {str(lease_id): at for lease_id, at in renewals.items()},
    })


async def load_renewals(c: Container) -> dict[int, float]:
    """The latest keepalive of every lease, over every gateway's renewal document."""
    latest: dict[int, float] = {}
    docs: list[dict[str, Any]] = await c.query(
        "SELECT * FROM c WHERE c.pk = @pk AND c.type = 'renew'")
    for doc in docs:
        for text, at in dict(doc.get("leases") or {}).items():
            lease_id = int(text)
            if float(at) > latest.get(lease_id, 0.0):
                latest[lease_id] = float(at)
    return latest
