"""The backend contract, on the embedded backend and on the Cosmos backend (against the Cosmos
test server, tests/cosmos_server/), plus what only a shared log has: tail, read barrier,
conflicts between gateways, split commits, and faults injected under the SDK.

The contract: a replica rebuilt from ``load()`` (as Store.open builds it) equals the replica
made by applying exactly what was committed, after any compaction; a commit at a revision that
is no longer current is a CommitConflict and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.backend_contract import History, dump, reference_replica, replica_from_loaded
from support.cosmos import settings_for

from etcdgw.backends.base import Backend, BackendError, CommitConflict, Committed
from etcdgw.backends.embedded import EmbeddedBackend

pytestmark = pytest.mark.timeout(60)

KEYS = [b"/", b"\\", b"?", b"#", b"\x00", b"\xff", b"a/b?c#d\\e", b"\x00\xff" * 3,
        b"k" * 600, bytes(range(256)) * 8]

Factory = Callable[[], Awaitable[Any]]


@pytest.fixture(params=["embedded", "cosmos"])
async def open_backend(request: pytest.FixtureRequest,
                       tmp_path: Path) -> AsyncIterator[Factory]:
    """``await open_backend()`` -> a new backend instance on the test's one store."""
    opened: list[Any] = []
    if request.param == "embedded":
        async def factory() -> Any:
            b = EmbeddedBackend(str(tmp_path / "data"))
            opened.append(b)
            return b
    else:
        settings = request.getfixturevalue("cosmos_settings")
        from etcdgw.backends.cosmos import CosmosBackend

        async def factory() -> Any:
            b = CosmosBackend(settings)
            opened.append(b)
            return b
    yield factory
    for b in opened:
        await b.close()


async def reload(factory: Factory) -> tuple[Backend, dict[str, Any]]:
    b = await factory()
    loaded = await b.load()
    return b, dump(replica_from_loaded(loaded))


# -- the generic contract (both backends) ------------------------------------------------------


async def test_load_empty(open_backend: Factory) -> None:
    a = await open_backend()
    loaded = await a.load()
    assert (loaded.rev, loaded.compact_rev, list(loaded.revisions), list(loaded.leases)) == (
        1, -1, [], [])
    assert loaded.cluster_id > 0 and loaded.member_id > 0
    b = await open_backend()
    again = await b.load()
    assert (again.cluster_id, again.member_id, again.rev) == (
        loaded.cluster_id, loaded.member_id, 1)
    assert a.size()[0] > 0


async def test_round_trip_arbitrary_keys_and_large_values(open_backend: Factory) -> None:
    a = await open_backend()
    await a.load()
    h = History()
    for i, key in enumerate(KEYS):
        await a.commit(h.rev, [h.next([(key, b"v%d" % i + bytes([i]) * i, 0)])], None)
    # a txn: several changes in one revision, a delete, a lease
    await a.commit(h.rev, [h.next([(KEYS[0], None, 0), (KEYS[1], b"two", 7),
                                   (b"fresh", b"", 7)])], None, leases=[(7, 30)])
    # group commit: several revisions in one call
    await a.commit(h.rev, [h.next([(b"g%d" % i, b"x" * i, 0)]) for i in range(5)], None,
                   expected_lease_seq=1)
    big = bytes(range(256)) * 3200  # 800 KiB of every byte value
    await a.commit(h.rev, [h.next([(b"big", big, 0)])], None, expected_lease_seq=1)
    await a.commit(h.rev, [h.next([(KEYS[0], b"back", 0)])], None, leases=[(8, 5), (7, None)],
                   expected_lease_seq=1)  # one commit with lease changes before this one
    _, got = await reload(open_backend)
    assert got == dump(reference_replica(h.revisions))
    b = await open_backend()
    loaded = await b.load()
    assert list(loaded.leases) == [(8, 5)]
    assert loaded.rev == h.rev


async def test_conflict_exactly_one_wins(open_backend: Factory) -> None:
    a, b = await open_backend(), await open_backend()
    await a.load()
    await b.load()
    ha, hb = History(), History()
    ra = ha.next([(b"k", b"from a", 0)])
    rb = hb.next([(b"k", b"from b", 0), (b"other", b"b", 0)])
    results = await asyncio.gather(a.commit(1, [ra], None), b.commit(1, [rb], None),
                                   return_exceptions=True)
    conflicts = [r for r in results if isinstance(r, CommitConflict)]
    assert len(conflicts) == 1 and results.count(None) == 1, results
    winner = ha if results[0] is None else hb
    _, got = await reload(open_backend)
    assert got == dump(reference_replica(winner.revisions))
    # the loser catches up and commits on top
    loser = b if results[0] is None else a
    nxt = winner.next([(b"k", b"after", 0)])
    await loser.commit(2, [nxt], None)
    _, got = await reload(open_backend)
    assert got == dump(reference_replica(winner.revisions))


async def test_compaction_keeps_exactly_what_reads_need(open_backend: Factory) -> None:
    a = await open_backend()
    await a.load()
    h = History()
    for i in range(12):
        await a.commit(h.rev, [h.next([(b"k%d" % (i % 3), b"v%d" % i, 0)])], None)
    await a.commit(h.rev, [h.next([(b"k1", None, 0), (b"solo", b"s", 0)])], None)
    await a.commit(h.rev, [h.next([(b"k2", b"later", 0)])], None)
    compact_at = h.rev - 1
    await a.commit(h.rev, [], compact_at)
    await a.compact(compact_at)
    await a.commit(h.rev, [h.next([(b"k0", b"after", 0)])], None)
    _, got = await reload(open_backend)
    assert got == dump(reference_replica(h.revisions, compact_at))
    # a second compaction over the first
    await a.commit(h.rev, [], h.rev)
    await a.compact(h.rev)
    _, got = await reload(open_backend)
    assert got == dump(reference_replica(h.revisions, h.rev))


# -- shared log: Cosmos only -------------------------------------------------------------------


async def _collect(tail: AsyncIterator[Committed], until_rev: int,
                   until: Callable[[list[Committed]], bool] | None = None) -> list[Committed]:
    out: list[Committed] = []
    async for entry in tail:
        out.append(entry)
        if entry.rev >= until_rev and (until is None or until(out)):
            return out
    return out


async def test_tail_from_two_gateways_sees_every_commit_in_order(cosmos_settings: Any) -> None:
    from etcdgw.backends.cosmos import CosmosBackend

    a, b = CosmosBackend(cosmos_settings), CosmosBackend(cosmos_settings)
    try:
        await a.load()
        await b.load()
        tails = [a.tail(1), b.tail(1)]
        h = History()
        writers = [a, b]
        for i in range(10):
            w = writers[i % 2]
            await w.commit(h.rev, [h.next([(b"k%d" % (i % 4), b"v%d" % i, 0)])], None,
                           leases=[(100 + i, 10)] if i == 3 else (),
                           expected_lease_seq=int(i > 3))
        await b.commit(h.rev, [], 5, expected_lease_seq=1)  # a compaction entry
        await a.commit(h.rev, [], None, leases=[(200, 7)],
                       expected_lease_seq=1)  # a lease-only entry
        for tail in tails:
            got = await asyncio.wait_for(_collect(
                tail, h.rev, lambda es: any(e.compact_rev == 5 for e in es)
                and any((200, 7) in e.leases for e in es)), 20)
            revs = [r for e in got for r, _ in e.revisions]
            assert revs == list(range(2, h.rev + 1))
            assert [(r, [(v.key, v.value) for v in ch]) for e in got for r, ch in e.revisions] \
                == [(r, [(v.key, v.value) for v in ch]) for r, ch in h.revisions]
            assert [e.rev for e in got] == sorted(e.rev for e in got)
            assert any((103, 10) in e.leases for e in got)
            # the lease-only commit: an entry without revisions at the log's revision
            assert [e.rev for e in got if (200, 7) in e.leases and not e.revisions] == [h.rev]
    finally:
        await a.close()
        await b.close()


async def test_read_barrier_and_requests_per_commit(cosmos_endpoint: str) -> None:
    """Requests each operation costs (the local server charges 1 RU per request)."""
    from support.cosmos import drop_database
    from support.cosmos_faults import FaultTransport

    from etcdgw.backends.cosmos import CosmosBackend

    settings = settings_for(cosmos_endpoint)
    t = FaultTransport()
    a = CosmosBackend(settings, transport=t)
    try:
        await a.load()
        h = History()
        n = len(t.sent)
        await a.commit(h.rev, [h.next([(b"put", b"v", 0)])], None)
        put = t.sent[n:]
        n = len(t.sent)
        await a.commit(h.rev, [h.next([(b"t1", b"1", 0), (b"t2", b"2", 0), (b"t3", None, 0)])],
                       None)
        txn = t.sent[n:]
        n = len(t.sent)
        assert (await a.committed_position()).rev == h.rev
        barrier = t.sent[n:]
        assert put == ["BATCH"] and txn == ["BATCH"] and barrier == ["GET /meta"]
    finally:
        await a.close()
        await drop_database(settings)


async def test_request_too_large(cosmos_settings: Any) -> None:
    from etcdgw.backends.base import RequestTooLarge
    from etcdgw.backends.cosmos import CosmosBackend

    a = CosmosBackend(cosmos_settings)
    try:
        await a.load()
        h = History()
        with pytest.raises(RequestTooLarge) as e:
            await a.commit(1, [h.next([(b"ok", b"x", 0)]),
                               h.next([(b"huge", b"x" * 1_000_000, 0)])], None)
        assert e.value.rev == 3
        assert (await a.committed_position()).rev == 1
    finally:
        await a.close()


async def test_split_commit_is_all_or_nothing_for_readers(cosmos_endpoint: str) -> None:
    """Force commits over the batch limit (max_batch_ops=5): claim, rev documents in several
    batches, meta at the commit point, key documents after; load and tail stay exact."""
    from support.cosmos import drop_database

    from etcdgw.backends.cosmos import CosmosBackend

    settings = settings_for(cosmos_endpoint, max_batch_ops=5)
    a, b = CosmosBackend(settings), CosmosBackend(settings)
    try:
        await a.load()
        await b.load()
        tail = b.tail(1)
        h = History()
        await a.commit(h.rev, [h.next([(b"s%d" % i, b"v", 0)]) for i in range(12)], None,
                       leases=[(1, 5)])
        await b.commit(h.rev, [h.next([(b"s1", b"b", 0)])], None,
                       expected_lease_seq=1)  # b waits for nothing
        await a.commit(h.rev, [h.next([(b"k%d" % i, b"w", 0) for i in range(7)])], None,
                       expected_lease_seq=1)
        got = await asyncio.wait_for(_collect(tail, h.rev), 20)
        assert [r for e in got for r, _ in e.revisions] == list(range(2, h.rev + 1))
        _, state = await reload(lambda: _ret(CosmosBackend(settings)))
        assert state == dump(reference_replica(h.revisions))
        meta = await a.c.read("meta")
        assert meta is not None and meta["lock"] is None
        keys = await a.c.query("SELECT VALUE COUNT(1) FROM c WHERE c.pk = @pk AND "
                               "c.type = 'key'")
        assert keys == [19]
    finally:
        await a.close()
        await b.close()
        await drop_database(settings)


async def _ret(x: Any) -> Any:
    return x


async def test_abandoned_split_commit_is_taken_over(cosmos_endpoint: str) -> None:
    """A writer claims the log and dies after writing some rev documents: once its lock
    expires, the next writer cancels the claim, deletes the orphans and commits."""
    from support.cosmos import drop_database

    from etcdgw.backends.cosmos import CosmosBackend
    from etcdgw.backends.cosmos import model as m

    settings = settings_for(cosmos_endpoint, lock_ttl=0.3)
    a = CosmosBackend(settings)
    try:
        await a.load()
        meta = await a.c.read("meta")
        assert meta is not None
        lock = {"id": "deadbeef", "from": 2, "to": 3, "phase": "writing", "until": 0}
        body = m.next_meta(meta, rev=1, compact_rev=None, batch=None, lock=lock)
        await a.c.raw.replace_item("meta", body)
        h = History()
        orphan = m.rev_doc(2, h.next([(b"ghost", b"g", 0)])[1], "deadbeef", 2, 3)
        await a.c.raw.create_item(orphan)
        h = History()
        await a.commit(1, [h.next([(b"real", b"r", 0)])], None)
        _, state = await reload(lambda: _ret(CosmosBackend(settings)))
        assert state == dump(reference_replica(h.revisions))
        doc = await a.c.read(m.rev_id(2))
        assert doc is not None and doc["batch"] != "deadbeef"
    finally:
        await a.close()
        await drop_database(settings)


# -- faults injected under the SDK -------------------------------------------------------------


@pytest.fixture
async def faulty(cosmos_endpoint: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    from support.cosmos import drop_database
    from support.cosmos_faults import FaultTransport

    from etcdgw.backends.cosmos import CosmosBackend

    settings = settings_for(cosmos_endpoint, request_timeout=0.5, max_retries=4)
    t = FaultTransport()
    b = CosmosBackend(settings, transport=t)
    await b.load()
    yield b, t, settings
    await b.close()
    await drop_database(settings)


async def _check_log(settings: Any, h: History) -> None:
    from etcdgw.backends.cosmos import CosmosBackend

    _, state = await reload(lambda: _ret(CosmosBackend(settings)))
    assert state == dump(reference_replica(h.revisions))


async def test_throttled_commit_waits_and_retries(faulty: tuple[Any, Any, Any]) -> None:
    from support.cosmos_faults import is_batch

    b, t, settings = faulty
    h = History()
    f = t.status(is_batch, 429, retry_after_ms=40, times=2)
    await b.commit(1, [h.next([(b"k", b"v", 0)])], None)
    assert f.hits == 2
    await _check_log(settings, h)


async def test_persistent_throttling_is_throttled_and_leaves_nothing(
        faulty: tuple[Any, Any, Any]) -> None:
    """429 past the retries: Throttled (the store answers RESOURCE_EXHAUSTED ``too many
    requests``, contract E05/E14), and the log is as before."""
    from support.cosmos_faults import is_batch, is_meta_read

    from etcdgw.backends.base import Throttled

    b, t, settings = faulty
    t.status(is_batch, 429, retry_after_ms=1, times=1000)
    h = History()
    with pytest.raises(Throttled):
        await b.commit(1, [h.next([(b"k", b"v", 0)])], None)
    t.status(is_meta_read, 429, retry_after_ms=1, times=1000)
    with pytest.raises(Throttled):
        await b.committed_position()
    await _check_log(settings, History())  # nothing of the refused commit was written


async def test_unavailable_and_hanging_reads_are_retried(faulty: tuple[Any, Any, Any]) -> None:
    from support.cosmos_faults import is_meta_read

    b, t, _ = faulty
    f503 = t.status(is_meta_read, 503, times=2)
    assert (await b.committed_position()).rev == 1
    hang = t.hang(is_meta_read)
    assert (await b.committed_position()).rev == 1
    assert (f503.hits, hang.hits) == (2, 1)
    t.status(is_meta_read, 503, times=100)
    with pytest.raises(BackendError) as e:
        await b.committed_position()
    assert settings_key(b) not in str(e.value)


def settings_key(b: Any) -> str:
    return str(b.s.key)


@pytest.mark.parametrize("fault", ["lose", "503", "hang"])
async def test_commit_with_unknown_outcome_is_resolved(faulty: tuple[Any, Any, Any],
                                                       fault: str) -> None:
    """The batch's answer never arrives (applied: "lose"; not applied: "503", "hang"): commit
    reads the log, returns if it was applied, and otherwise fences and retries; the log has
    every revision exactly once."""
    from support.cosmos_faults import is_batch

    b, t, settings = faulty
    h = History()
    await b.commit(1, [h.next([(b"a", b"1", 0)])], None)
    if fault == "lose":
        f = t.lose_response(is_batch)
    elif fault == "503":
        f = t.status(is_batch, 503)
    else:
        f = t.hang(is_batch)
    n = len(t.sent)
    await b.commit(h.rev, [h.next([(b"a", b"2", 0), (b"b", b"x", 0)])], None)
    assert f.hits == 1
    if fault == "lose":  # applied: found in meta.recent, never sent again
        assert t.sent[n:] == ["BATCH", "GET /meta"]
    else:  # not applied: meta fenced (its etag moves), then the batch again
        assert t.sent[n:] == ["GET /meta", "PUT /meta", "BATCH"]
    await b.commit(h.rev, [h.next([(b"c", b"3", 0)])], None)
    await _check_log(settings, h)
    meta = await b.c.read("meta")
    assert meta["rev"] == h.rev


async def test_lost_response_of_a_conflicting_commit(faulty: tuple[Any, Any, Any]) -> None:
    """Another gateway commits while our batch's answer is lost: our batch was not applied
    (412 server-side); commit must raise CommitConflict, not return."""
    from support.cosmos_faults import is_batch

    from etcdgw.backends.cosmos import CosmosBackend

    b, t, settings = faulty
    other = CosmosBackend(settings)
    try:
        await other.load()
        h = History()
        mine = History()
        await other.commit(1, [h.next([(b"o", b"other", 0)])], None)
        f = t.lose_response(is_batch)
        b._meta = {**(b._meta or {}), "rev": 1}  # our stale view: still at revision 1
        with pytest.raises(CommitConflict):
            await b.commit(1, [mine.next([(b"m", b"mine", 0)])], None)
        assert f.hits == 1
        await _check_log(settings, h)
    finally:
        await other.close()
