"""The embedded backend: one SQLite file in the data dir (DESIGN "Backends / embedded").

- WAL mode with ``synchronous=FULL``: a commit returns only after its fsync, so an acknowledged
  write survives a crash or power loss.
- One connection, used by one dedicated thread: SQLite serialises writers anyway, and a single
  thread keeps the connection's state simple. The event loop never blocks on the disk.
- Group commit: the store hands a whole batch of revisions; it is one SQLite transaction, one
  fsync, however many requests it holds.
- Physical compaction deletes at most ``COMPACT_CHUNK`` rows per transaction, so a commit waits
  for one chunk at most, never for the whole compaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from etcdgw.backends.base import BackendError, CommitConflict, LeaseChange, Loaded, Revision
from etcdgw.mvcc.replica import Version

__all__ = ["EmbeddedBackend"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_FILE = "etcdgw.db"
COMPACT_CHUNK = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    rev INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    key BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,   -- 0: a tombstone (the key was deleted at rev)
    lease INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (rev, sub)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_key_rev ON kv (key, rev);
-- Live leases: id and effective TTL. No deadline: after a restart every lease gets its full TTL
-- again (keepalives are not written, so the remaining TTL is unknown; never expire early, L15).
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
"""


def _random_id() -> int:
    # etcd ids are non-zero uint64s; keep them below 2**63 so every client's int64 is happy.
    return secrets.randbits(63) or 1


class EmbeddedBackend:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_FILE)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etcdgw-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._free_bytes = 0  # free pages inside the file, as last counted

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise BackendError("backend is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # -- open and load ---------------------------------------------------------------------

    async def load(self) -> Loaded:
        return await self._call(self._load)

    def _load(self) -> Loaded:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if "cluster_id" not in meta:
            meta = {"cluster_id": _random_id(), "member_id": _random_id(), "rev": 1, "compact": -1}
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        rows = db.execute(
            "SELECT rev, key, create_rev, version, lease, value FROM kv ORDER BY rev, sub"
        ).fetchall()
        return Loaded(
            cluster_id=meta["cluster_id"],
            member_id=meta["member_id"],
            rev=meta["rev"],
            compact_rev=meta["compact"],
            revisions=_group(rows),
            leases=db.execute("SELECT id, ttl FROM leases").fetchall(),
        )

    # -- commit ----------------------------------------------------------------------------

    async def commit(
        self,
        expected_rev: int,
        revisions: list[Revision],
        compact_rev: int | None,
        leases: Sequence[LeaseChange] = (),
        *,
        expected_lease_seq: int = 0,  # one writer: the position cannot have moved
    ) -> None:
        await self._call(lambda: self._commit(expected_rev, revisions, compact_rev, leases))

    def _commit(
        self,
        expected: int,
        revisions: list[Revision],
        compact_rev: int | None,
        leases: Sequence[LeaseChange] = (),
    ) -> None:
        db = self._conn()
        rows = [
            (rev, sub, v.key, v.create, v.version, v.lease, v.value)
            for rev, changes in revisions
            for sub, v in enumerate(changes)
        ]
        new_rev = revisions[-1][0] if revisions else expected
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute("UPDATE meta SET value = ? WHERE name = 'rev' AND value = ?",
                                 (new_rev, expected))
                if cur.rowcount != 1:
                    raise CommitConflict(f"log is not at revision {expected}")
                if rows:
                    db.executemany("INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                if compact_rev is not None:
                    db.execute("UPDATE meta SET value = ? WHERE name = 'compact'", (compact_rev,))
                for lease_id, ttl in leases:  # in order: a batch may revoke then re-grant an id
                    if ttl is None:
                        db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
                    else:
                        db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (lease_id, ttl))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise BackendError(f"sqlite: {e}") from e

    # -- compaction ------------------------------------------------------------------------

    async def compact(self, rev: int) -> None:
        while not self._closed and await self._call(lambda: self._compact_chunk(rev)):
            pass

    def _compact_chunk(self, rev: int) -> bool:
        """Delete one chunk of versions that reads at >= rev cannot see; True if more remain.

        Unreachable: a version with a newer version of the same key at or below ``rev`` (newer:
        a later revision, or later in the same revision: a txn may put a key, then delete it),
        and a tombstone below ``rev`` (the key is absent from every readable revision). A tombstone
        AT ``rev`` stays until the next compaction: reads do not need it, but the revision log
        does (a watch from the compact revision replays that revision's deletes, and the
        replica rebuilt after a restart must hold the same log as the live one)."""
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            n = db.execute(
                """
                DELETE FROM kv WHERE (rev, sub) IN (
                    SELECT rev, sub FROM kv AS old
                    WHERE old.rev <= :c AND (
                        (old.version = 0 AND old.rev < :c) OR EXISTS (
                            SELECT 1 FROM kv AS new
                            WHERE new.key = old.key AND new.rev <= :c
                              AND (new.rev > old.rev OR (new.rev = old.rev AND new.sub > old.sub))))
                    LIMIT :n)
                """,
                {"c": rev, "n": COMPACT_CHUNK},
            ).rowcount
        if n < COMPACT_CHUNK:
            self._count_free()
        return n == COMPACT_CHUNK

    def size(self) -> tuple[int, int]:
        """(bytes on disk: database + WAL, bytes in use: that minus the free pages last
        counted, after a compaction or a defragmentation)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total, max(total - self._free_bytes, 0)

    def _count_free(self) -> None:
        db = self._conn()
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        self._free_bytes = free * db.execute("PRAGMA page_size").fetchone()[0]

    # -- maintenance (Defragment, Snapshot) -------------------------------------------------

    async def defragment(self) -> None:
        """Give the space freed by compaction back to the file system (etcd's Defragment):
        VACUUM rewrites the file, then the WAL is truncated. Runs on the backend's thread, so
        commits wait for it, as etcd's writes wait for its defragmentation."""
        await self._call(self._defragment)

    def _defragment(self) -> None:
        db = self._conn()
        try:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._count_free()
        except sqlite3.Error as e:
            raise BackendError(f"sqlite: {e}") from e

    async def snapshot(self, dest: str) -> None:
        """Write a consistent copy of the database to ``dest`` with SQLite's online backup API,
        read through a second connection: in WAL mode a reader never blocks the writer, and a
        one-step backup copies one consistent read transaction."""
        if self._closed:
            raise BackendError("backend is closed")
        await asyncio.to_thread(self._snapshot, dest)

    def _snapshot(self, dest: str) -> None:
        try:
            src = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True)
            try:
                out = sqlite3.connect(dest)
                try:
                    src.backup(out)
                finally:
                    out.close()
            finally:
                src.close()
        except sqlite3.Error as e:
            raise BackendError(f"sqlite: {e}") from e

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._close)
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendError("backend is not open")
        return self._db


def _group(rows: list[tuple[int, bytes, int, int, int, bytes]]) -> Iterator[Revision]:
    """Rows ascending by (rev, sub) -> one (rev, versions) per revision."""
    cur_rev = -1
    changes: list[Version] = []
    for rev, key, create, version, lease, value in rows:
        if rev != cur_rev:
            if changes:
                yield cur_rev, changes
            cur_rev, changes = rev, []
        key, value = bytes(key), bytes(value)
        changes.append(Version(key, rev, create, version, value, lease))
    if changes:
        yield cur_rev, changes
