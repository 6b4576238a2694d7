"""Snapshots: etcd's stream framing around a copy of the embedded SQLite database.

Format of a snapshot file (what ``etcdctl snapshot save`` writes from our Snapshot stream):

    <SQLite database file, zero-padded to a multiple of 512 bytes> <SHA-256 of those bytes>

etcdctl concatenates every chunk's blob and checks that the total size is a multiple of 512
plus 32 (the SHA-256 it expects at the end, contract MT09), so that is the framing the server
streams: 32 KiB chunks with ``remaining_bytes``, then one message whose blob is the digest. SQLite
pages are 512..65536 bytes, so the database is normally a multiple of 512 already; any padding is
dropped again on restore using the page size and page count in the SQLite header.

The database inside is NOT an etcd bbolt file: ``etcdctl snapshot restore`` cannot read it.
``etcdgw snapshot restore SNAPSHOT --data-dir DIR`` verifies the digest and turns it back into a
data dir with the same keys, revisions, compaction point and leases, and -- like a restored etcd
member, which starts a new cluster -- fresh cluster and member ids.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from typing import Final

__all__ = [
    "CHUNK_BYTES",
    "DIGEST_BYTES",
    "SnapshotError",
    "frame_padding",
    "restore",
    "sqlite_length",
    "verify",
]

#: etcd's snapshotSendBufferSize.
CHUNK_BYTES: Final = 32 * 1024
DIGEST_BYTES: Final = 32
_ALIGN: Final = 512
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


class SnapshotError(Exception):
    """A snapshot file that cannot be restored; the message says why."""


def frame_padding(size: int) -> int:
    """Zero bytes to append to ``size`` bytes of data so that etcdctl accepts the stream."""
    return -size % _ALIGN


def sqlite_length(data: bytes) -> int:
    """The length of the SQLite database at the start of ``data`` (from its header)."""
    if len(data) < 100 or not data.startswith(_SQLITE_MAGIC):
        raise SnapshotError("not an etcdgw snapshot: no SQLite database inside")
    page_size = int.from_bytes(data[16:18], "big")
    if page_size == 1:
        page_size = 65536
    pages = int.from_bytes(data[28:32], "big")
    length = page_size * pages
    if page_size < 512 or pages == 0 or length > len(data):
        # A header without a valid page count (very old writers): take the data as it is.
        return len(data)
    return length


def verify(blob: bytes, *, skip_hash_check: bool = False) -> bytes:
    """The database bytes of a snapshot file, after checking its digest.

    ``skip_hash_check``: the file is a bare database (e.g. copied from a data dir), not a
    snapshot; used as is.
    """
    if skip_hash_check:
        data = blob
    else:
        if len(blob) % _ALIGN != DIGEST_BYTES:
            raise SnapshotError(
                f"snapshot size {len(blob)} is not a multiple of {_ALIGN} plus a "
                f"{DIGEST_BYTES}-byte SHA-256 (use --skip-hash-check for a bare database)"
            )
        data, digest = blob[:-DIGEST_BYTES], blob[-DIGEST_BYTES:]
        if hashlib.sha256(data).digest() != digest:
            raise SnapshotError("snapshot SHA-256 mismatch: the file is corrupt or truncated")
    return data[: sqlite_length(data)]


def restore(snapshot_path: str, data_dir: str, *, skip_hash_check: bool = False) -> tuple[int, int]:
    """Create ``data_dir`` from a snapshot; returns the new (cluster id, member id).

    Refuses an existing non-empty ``data_dir`` (like etcdutl), never overwriting a store.
    """
    from etcdgw.backends.embedded import DB_FILE

    with open(snapshot_path, "rb") as f:
        blob = f.read()
    data = verify(blob, skip_hash_check=skip_hash_check)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise SnapshotError(f"data dir {data_dir!r} exists and is not empty")
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, DB_FILE)
    tmp = path + ".restoring"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    cluster_id, member_id = secrets.randbits(63) or 1, secrets.randbits(63) or 1
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            check = db.execute("PRAGMA integrity_check").fetchone()
            if not check or check[0] != "ok":
                raise SnapshotError(f"database in the snapshot is damaged: {check}")
            names = {row[0] for row in db.execute("SELECT name FROM meta")}
            if not {"cluster_id", "member_id", "rev", "compact"} <= names:
                raise SnapshotError("not an etcdgw snapshot: no etcdgw meta table")
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE meta SET value = ? WHERE name = 'cluster_id'", (cluster_id,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'member_id'", (member_id,))
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
    except sqlite3.Error as exc:
        os.unlink(tmp)
        raise SnapshotError(f"cannot restore: {exc}") from exc
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    return cluster_id, member_id
