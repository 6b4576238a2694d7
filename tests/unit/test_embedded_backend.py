"""Store on the embedded SQLite backend, on a real file in tmp_path.

Durability across close/reopen (G06, M14, H02), physical compaction (C04, C05), failed commits
(G03: nothing applied, the client gets a retryable UNAVAILABLE) and group commit under
concurrency (M03: dense, distinct revisions).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from etcdgw import errors
from etcdgw._proto import etcdserverpb as pb
from etcdgw.backends.base import BackendError, CommitConflict
from etcdgw.backends.embedded import DB_FILE, EmbeddedBackend
from etcdgw.store import Store

WHOLE = (b"\x00", b"\x00")
RANGES = [WHOLE, (b"k", b"l"), (b"k03", b""), (b"a", b"\x00"), (b"gone", b"")]


async def open_store(path: Path, backend: Any = None) -> tuple[Store, Any]:
    backend = backend if backend is not None else EmbeddedBackend(str(path))
    return await Store.open(backend), backend


async def shut(store: Store, backend: Any) -> None:
    await store.close()
    await backend.close()


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Store, Any]]:
    store, backend = await open_store(tmp_path)
    yield store, backend
    await shut(store, backend)


async def put(store: Store, key: bytes, value: bytes = b"v", **kw: Any) -> pb.PutResponse:
    return pb.PutResponse.parse(await store.put(pb.PutRequest(key=key, value=value, **kw)))


async def delete(store: Store, key: bytes, end: bytes = b"") -> pb.DeleteRangeResponse:
    raw = await store.delete_range(pb.DeleteRangeRequest(key=key, range_end=end))
    return pb.DeleteRangeResponse.parse(raw)


async def txn(store: Store, success: list[pb.RequestOp]) -> pb.TxnResponse:
    return pb.TxnResponse.parse(await store.txn(pb.TxnRequest(success=success)))


async def compact(store: Store, rev: int, physical: bool = False) -> None:
    await store.compact(pb.CompactionRequest(revision=rev, physical=physical))


async def get(store: Store, key: bytes, end: bytes = b"", rev: int = 0) -> pb.RangeResponse:
    raw = await store.range(pb.RangeRequest(key=key, range_end=end, revision=rev))
    return pb.RangeResponse.parse(raw)


def put_op(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def delete_op(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


async def every_read(store: Store) -> dict[tuple[int, bytes, bytes], bytes]:
    """Raw RangeResponse bytes for RANGES at every readable revision."""
    first = max(store.compact_revision, 1)
    out = {}
    for rev in range(first, store.revision + 1):
        for key, end in RANGES:
            out[rev, key, end] = await store.range(
                pb.RangeRequest(key=key, range_end=end, revision=rev)
            )
    return out


async def write_history(store: Store) -> None:
    """A history with overwrites, deletes, a re-created key, a multi-key txn and a revision
    holding a put and a delete of the same key."""
    for i in range(8):
        await put(store, b"k%02d" % i, b"v%d" % i)
    for i in range(0, 8, 2):
        await put(store, b"k%02d" % i, b"w%d" % i, lease=0)
    await delete(store, b"k03")
    await delete(store, b"k05", b"k07")  # k05, k06
    await put(store, b"k03", b"again")
    await txn(store, [put_op(b"a1", b"x"), put_op(b"a2", b"y"), delete_op(b"k00")])
    # a from-key delete never conflicts with a put (etcd's literal interval): one revision
    # with a put of "gone" and then its deletion
    await put(store, b"gone", b"1")
    await txn(store, [put_op(b"gone", b"2"), delete_op(b"gone", b"\x00")])
    await put(store, b"zz", b"last")


# -- restart -----------------------------------------------------------------------------------


async def test_reopen_keeps_revision_ids_and_every_read(tmp_path: Path) -> None:
    store, backend = await open_store(tmp_path)
    ids = (store.cluster_id, store.member_id)
    assert all(ids) and ids[0] != ids[1]  # H02
    assert store.revision == 1  # H04
    await write_history(store)
    await compact(store, 5)
    before = await every_read(store)
    state = (store.revision, store.compact_revision)
    assert state[1] == 5
    await shut(store, backend)

    store, backend = await open_store(tmp_path)
    try:
        assert (store.cluster_id, store.member_id) == ids
        assert (store.revision, store.compact_revision) == state
        assert await every_read(store) == before
        with pytest.raises(errors.EtcdError) as e:
            await get(store, b"k01", rev=4)
        assert e.value == errors.COMPACTED
        # the next write continues the revision sequence (G06)
        assert (await put(store, b"new")).header.revision == state[0] + 1
    finally:
        await shut(store, backend)


async def test_reopen_after_physical_compaction_reads_the_same(tmp_path: Path) -> None:
    store, backend = await open_store(tmp_path)
    await write_history(store)
    await put(store, b"k01", b"after")
    await compact(store, store.revision - 1, physical=True)
    before = await every_read(store)
    state = (store.revision, store.compact_revision)
    await shut(store, backend)

    store, backend = await open_store(tmp_path)
    try:
        assert (store.revision, store.compact_revision) == state
        assert await every_read(store) == before
    finally:
        await shut(store, backend)


async def test_put_and_delete_in_one_revision_stay_deleted_after_compaction_and_restart(
    tmp_path: Path,
) -> None:
    """M11/M14: a txn that puts a key and then deletes it (from-key delete) leaves it absent;
    a physical compaction above that revision must not bring it back after a restart."""
    store, backend = await open_store(tmp_path)
    await put(store, b"x", b"1")
    resp = await txn(store, [put_op(b"y", b"2"), delete_op(b"y", b"\x00")])
    assert resp.header.revision == 3
    await put(store, b"z", b"3")
    assert (await get(store, b"y")).count == 0
    await compact(store, 4, physical=True)
    assert [kv.key for kv in (await get(store, b"\x00", b"\x00")).kvs] == [b"x", b"z"]
    await shut(store, backend)

    store, backend = await open_store(tmp_path)
    try:
        assert [kv.key for kv in (await get(store, b"\x00", b"\x00")).kvs] == [b"x", b"z"]
        assert (await get(store, b"y")).count == 0
    finally:
        await shut(store, backend)


# -- physical compaction -------------------------------------------------------------------------


def kv_rows(path: Path) -> list[tuple[int, bytes, int]]:
    db = sqlite3.connect(path / DB_FILE)
    try:
        return [
            (rev, bytes(key), version)
            for rev, key, version in db.execute("SELECT rev, key, version FROM kv ORDER BY rev")
        ]
    finally:
        db.close()


def retained(rows: list[tuple[int, bytes, int]], c: int) -> list[tuple[int, bytes, int]]:
    """What compaction at c must keep (C04): every version above c; per key, the version live
    at c unless it is a tombstone below c (a tombstone at c may stay)."""
    keep = [r for r in rows if r[0] > c]
    last: dict[bytes, tuple[int, bytes, int]] = {}
    for r in rows:
        if r[0] <= c:
            last[r[1]] = r
    for r in last.values():
        if r[2] != 0 or r[0] == c:
            keep.append(r)
    return sorted(keep)


@pytest.mark.parametrize("at", ["middle", "current"])
async def test_physical_compaction_shrinks_the_kv_table(tmp_path: Path, at: str) -> None:
    store, backend = await open_store(tmp_path)
    try:
        for round_ in range(5):
            for i in range(10):
                await put(store, b"key%d" % i, b"%d" % round_)
        await delete(store, b"key7")
        await delete(store, b"key8", b"key:")  # key8, key9
        for i in range(3):
            await put(store, b"key%d" % i, b"last")
        rows = kv_rows(tmp_path)
        assert len(rows) == 50 + 3 + 3
        c = store.revision if at == "current" else 30
        await compact(store, c, physical=True)  # returns once the rows are gone (C05)
        after = kv_rows(tmp_path)
        assert after == retained(rows, c)
        if at == "current":
            assert len(after) == 7  # key0..key6, one version each
        else:
            assert len(after) < len(rows)
    finally:
        await shut(store, backend)


# -- failing commits ---------------------------------------------------------------------------


class FaultyBackend:
    """The real backend, except that commit raises ``fail`` while it is set."""

    def __init__(self, inner: EmbeddedBackend) -> None:
        self.inner = inner
        self.fail: BaseException | None = None
        self.commits = 0

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.commits += 1
        await self.inner.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "fault", [BackendError("injected: disk I/O error"), CommitConflict("injected: log moved")]
)
async def test_failed_commit_changes_nothing(tmp_path: Path, fault: BackendError) -> None:
    faulty = FaultyBackend(EmbeddedBackend(str(tmp_path)))
    store, _ = await open_store(tmp_path, faulty)
    try:
        await put(store, b"a", b"1")
        await put(store, b"b", b"1")
        rev = store.revision
        before = await every_read(store)

        faulty.fail = fault
        results = await asyncio.gather(
            store.put(pb.PutRequest(key=b"a", value=b"2")),
            store.delete_range(pb.DeleteRangeRequest(key=b"b")),
            store.txn(pb.TxnRequest(success=[put_op(b"c", b"3")])),
            store.compact(pb.CompactionRequest(revision=rev)),
            return_exceptions=True,
        )
        for r in results:
            assert r == errors.TIMEOUT  # UNAVAILABLE "etcdserver: request timed out"
        assert store.revision == rev
        assert store.compact_revision <= 0
        assert await every_read(store) == before
        # read-only requests still work while commits fail
        assert (await get(store, b"a")).kvs[0].value == b"1"

        faulty.fail = None
        resp = await put(store, b"a", b"3")
        assert resp.header.revision == rev + 1  # the failed revisions were never used
    finally:
        await shut(store, faulty)

    store, backend = await open_store(tmp_path)
    try:
        assert store.revision == rev + 1
        got = {kv.key: kv.value for kv in (await get(store, *WHOLE)).kvs}
        assert got == {b"a": b"3", b"b": b"1"}
    finally:
        await shut(store, backend)


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_puts_get_dense_revisions_and_are_durable(tmp_path: Path) -> None:
    store, backend = await open_store(tmp_path)
    n = 200
    try:
        await put(store, b"warmup")
        start = store.revision
        raws = await asyncio.gather(
            *(store.put(pb.PutRequest(key=b"c%03d" % i, value=b"%d" % i)) for i in range(n))
        )
        revs = [pb.PutResponse.parse(r).header.revision for r in raws]
        assert sorted(revs) == list(range(start + 1, start + n + 1))  # dense and distinct
        assert store.revision == start + n
        by_key = {b"c%03d" % i: rev for i, rev in enumerate(revs)}
    finally:
        await shut(store, backend)

    store, backend = await open_store(tmp_path)
    try:
        assert store.revision == start + n
        resp = await get(store, b"c", b"d")
        assert resp.count == n
        for kv in resp.kvs:
            assert kv.mod_revision == kv.create_revision == by_key[kv.key]
            assert kv.value == b"%d" % int(kv.key[1:])
    finally:
        await shut(store, backend)


async def test_concurrent_puts_to_one_key_count_versions(opened: tuple[Store, Any]) -> None:
    store, _ = opened
    n = 200
    raws = await asyncio.gather(
        *(store.put(pb.PutRequest(key=b"hot", value=b"%d" % i)) for i in range(n))
    )
    revs = sorted(pb.PutResponse.parse(r).header.revision for r in raws)
    assert revs == list(range(2, n + 2))
    kv = (await get(store, b"hot")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, n + 1, n)
