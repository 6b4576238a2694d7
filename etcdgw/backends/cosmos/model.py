"""The Cosmos document model (pure: no I/O, no azure import). DESIGN "Backends / cosmos".

Every document lives in ONE logical partition (``pk`` = :data:`PK`) so that one transactional
batch can write any of them atomically. Document types (field ``type``):

``meta`` (id ``meta``)
    ``rev`` (the log's revision), ``compact_rev``, ``cluster_id`` and ``member_id`` (decimal
    strings: uint64 ids do not survive JSON numbers above 2**53), ``recent`` (the batch ids of
    the last :data:`RECENT` commits, to resolve a commit whose response was lost), ``lock``
    (null, or the claim of a commit too large for one batch, see backend.py), ``seq`` (one
    more per write of meta) and ``lseq``, the lease sequence: one more per commit that wrote
    lease documents. (``rev``, ``lseq``) is the log's position (base.LogPosition): a lease
    grant or revoke without keys moves ``lseq`` but not ``rev``, and commits are conditional
    on both. Every commit replaces meta with If-Match on its etag: that is the
    conditional append (DESIGN rule 3).
``rev`` (id ``r`` + 20-digit revision)
    One per revision, written once (create), never modified: ``rev``, ``batch`` (the id of the
    commit that wrote it), ``first``/``last`` (the revisions of that commit) and ``ch``, the
    changes in execution order, each ``[key b64, value b64, create, version, lease]`` with
    version 0 for a delete (a tombstone) and the lease id as a decimal string.
``key`` (id :func:`key_id`)
    One per key with retained history: the key's latest version without the value (``rev``
    = its mod revision, indexed; ``create``, ``version``, ``lease``; version 0 = deleted).
    The value is in the rev document of ``rev``. ``key`` is the key in hex (order-preserving;
    only its first 1000 hex digits for longer keys, with ``long`` set), ``k`` the whole key
    in base64.
``lease`` (id ``l`` + lease id)
    ``lease``, ``ttl``, ``revoked`` (a revoke marks the document: LatestVersion change feeds
    never report deletes), ``rev`` (the log revision after the commit that wrote it),
    ``lseq`` (the lease sequence after it), ``batch``.
``member`` (id ``m`` + member id)
    One per gateway: ``member_id``, ``name``, ``client_urls``, ``heartbeat`` (unix seconds).

Invariant (what load and the tail rely on): a rev document with ``rev <= meta.rev`` is
committed and complete. Documents with ``rev > meta.rev`` may exist for a moment (a split commit
in progress) or be orphans of an abandoned one; readers never use them before a meta with
``rev >= `` theirs, and a writer that needs their id removes orphans first.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

from etcdgw.backends.base import LeaseChange, Revision
from etcdgw.mvcc.replica import Version

__all__ = [
    "META_ID",
    "PK",
    "RECENT",
    "decode_revision",
    "key_doc",
    "key_id",
    "lease_doc",
    "op_size",
    "rev_doc",
    "rev_id",
]

PK: Final = "etcd"
META_ID: Final = "meta"
RECENT: Final = 32
#: Cosmos ids are at most 1023 characters.
_MAX_HEX_ID: Final = 1000

Doc = dict[str, Any]


def rev_id(rev: int) -> str:
    return f"r{rev:020d}"


def key_id(key: bytes) -> str:
    """An id-safe, order-preserving id (hex) for keys up to 500 bytes; a digest beyond."""
    h = key.hex()
    if len(h) <= _MAX_HEX_ID:
        return "k" + h
    return "d" + hashlib.sha256(key).hexdigest()


def lease_id_doc(lease_id: int) -> str:
    return f"l{lease_id}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def new_meta(cluster_id: int, member_id: int) -> Doc:
    return {
        "id": META_ID, "pk": PK, "type": "meta", "rev": 1, "compact_rev": -1,
        "cluster_id": str(cluster_id), "member_id": str(member_id), "recent": [], "lock": None,
        "seq": 0, "lseq": 0,
    }


def meta_body(meta: Doc) -> Doc:
    """The writable fields of a meta document read back from Cosmos (no system fields)."""
    return {k: v for k, v in meta.items() if not k.startswith("_")}


def lease_seq(meta: Doc) -> int:
    """The lease sequence of a meta document (0 in containers written before it existed)."""
    return int(meta.get("lseq", 0))


def next_meta(meta: Doc, *, rev: int, compact_rev: int | None, batch: str | None,
              lock: Doc | None, leases: bool = False) -> Doc:
    """The meta body a write of meta puts: ``leases`` when the same batch writes lease
    documents (the lease sequence moves on)."""
    body = meta_body(meta)
    body["rev"] = rev
    if leases:
        body["lseq"] = lease_seq(meta) + 1
    if compact_rev is not None:
        body["compact_rev"] = compact_rev
    if batch is not None:
        body["recent"] = ([*body.get("recent", []), batch])[-RECENT:]
    body["lock"] = lock
    body["seq"] = int(body.get("seq", 0)) + 1
    return body


def rev_doc(rev: int, changes: Sequence[Version], batch: str, first: int, last: int) -> Doc:
    return {
        "id": rev_id(rev), "pk": PK, "type": "rev", "rev": rev, "batch": batch,
        "first": first, "last": last,
        "ch": [[_b64(v.key), _b64(v.value), v.create, v.version, str(v.lease)] for v in changes],
    }


def decode_revision(doc: Doc) -> Revision:
    rev = int(doc["rev"])
    return rev, [
        Version(_unb64(k), rev, int(c), int(n), _unb64(v), int(lease))
        for k, v, c, n, lease in doc["ch"]
    ]


def key_doc(v: Version) -> Doc:
    h = v.key.hex()
    doc: Doc = {
        "id": key_id(v.key), "pk": PK, "type": "key", "key": h[:_MAX_HEX_ID], "k": _b64(v.key),
        "rev": v.mod, "create": v.create, "version": v.version, "lease": str(v.lease),
    }
    if len(h) > _MAX_HEX_ID:
        doc["long"] = True
    return doc


def lease_doc(lease_id: int, ttl: int | None, rev: int, batch: str, lseq: int = 0) -> Doc:
    return {
        "id": lease_id_doc(lease_id), "pk": PK, "type": "lease", "lease": str(lease_id),
        "ttl": ttl or 0, "revoked": ttl is None, "rev": rev, "lseq": lseq, "batch": batch,
    }


def decode_lease(doc: Doc) -> LeaseChange:
    return int(doc["lease"]), None if doc.get("revoked") else int(doc["ttl"])


def latest_per_key(revisions: Iterable[Revision]) -> dict[bytes, Version]:
    latest: dict[bytes, Version] = {}
    for _, changes in revisions:
        for v in changes:
            latest[v.key] = v
    return latest


def latest_per_lease(leases: Iterable[LeaseChange]) -> dict[int, int | None]:
    out: dict[int, int | None] = {}
    for lease_id, ttl in leases:
        out.pop(lease_id, None)  # keep the order of the last change
        out[lease_id] = ttl
    return out


def op_size(doc: Doc) -> int:
    """Bytes the document adds to a batch request (JSON body plus the operation envelope)."""
    return len(json.dumps(doc, separators=(",", ":"))) + 96


def member_doc(member_id: int, name: str, client_urls: Sequence[str], now: float) -> Doc:
    return {
        "id": f"m{member_id}", "pk": PK, "type": "member", "member_id": str(member_id),
        "name": name, "client_urls": list(client_urls), "heartbeat": now,
    }
