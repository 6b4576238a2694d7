"""Watch (contract section 10, G04, M12-M13, X11) over gRPC, on etcd and etcdgw.

Each test drives one raw ``etcdserverpb.Watch/Watch`` stream (``support.watch.WatchClient``) and
writes through the KV service, then checks every field a client reads. The same assertions run on
Debian's etcd 3.4 (which proves the test right) and on etcdgw; where etcd 3.4 predates the
contract's newer behaviour the test branches on the target and names the contract line, and
etcdgw is held to the contract.

Servers are shared by the module: keys live under the test's ``prefix``; revisions are read from
responses (nothing else writes while a test runs, so "current revision" is exact).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.cosmos import target_with_cosmos
from support.driver import GrpcDriver
from support.procs import Server
from support.watch import (
    NODELETE,
    NOPUT,
    WatchClient,
    event_tuple,
    is_progress,
    kv_fields,
    prefix_end,
)

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

pytestmark = pytest.mark.etcd

target = target_with_cosmos  # also on "etcdgw-cosmos": etcdgw on the Cosmos backend

PUT = mvccpb.EventEventType.PUT
DELETE = mvccpb.EventEventType.DELETE
COMPACTED_REASON = "etcdserver: mvcc: required revision has been compacted"
EMPTY_RANGE_REASON = "mvcc: watcher range is empty"
DUPLICATE_REASON = "mvcc: duplicate watch ID provided on the WatchStream"


@pytest.fixture
async def kv(target: Server) -> AsyncIterator[GrpcDriver]:
    driver = GrpcDriver.connect(target)
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
async def w(target: Server) -> AsyncIterator[WatchClient]:
    async with WatchClient.connect(target) as client:
        yield client


async def current(kv: GrpcDriver) -> int:
    r = await kv.range(pb.RangeRequest(key=b"\x00/absent-for-revision"))
    return int(r.header.revision)


async def put(kv: GrpcDriver, key: bytes, value: bytes = b"v") -> int:
    r = await kv.put(pb.PutRequest(key=key, value=value))
    assert isinstance(r, pb.PutResponse), r
    return int(r.header.revision)


async def delete(kv: GrpcDriver, key: bytes, range_end: bytes = b"") -> int:
    r = await kv.delete_range(pb.DeleteRangeRequest(key=key, range_end=range_end))
    assert isinstance(r, pb.DeleteRangeResponse), r
    return int(r.header.revision)


async def compact(kv: GrpcDriver, rev: int) -> None:
    r = await kv.compact(pb.CompactionRequest(revision=rev, physical=True))
    assert isinstance(r, pb.CompactionResponse), r


def kv_(key: bytes, create: int, mod: int, version: int, value: bytes,
        lease: int = 0) -> tuple[object, ...]:
    return (key, create, mod, version, value, lease)


# ---------------------------------------------------------------------------------------------
# created, live events, prev_kv


async def test_created_and_live_events(target: Server, kv: GrpcDriver, w: WatchClient,
                                       prefix: str) -> None:
    key = prefix.encode() + b"k"
    cur = await current(kv)
    created = await w.watch(key)
    # W06/H11: the created response names the watcher and carries the current revision.
    assert created.watch_id == 0  # W05: first server-assigned id on the stream
    assert created.header.revision == cur
    assert created.header.cluster_id != 0 and created.header.member_id != 0
    assert not created.canceled and not created.events and created.compact_revision == 0

    r1 = await put(kv, key, b"v1")
    r2 = await put(kv, key, b"v2")
    r3 = await delete(kv, key)
    got = []
    for rev in (r1, r2, r3):
        resp = await w.recv()
        assert resp.watch_id == 0 and not resp.created and not resp.canceled
        assert resp.header.revision == rev  # W16: a live response carries its revision
        assert len(resp.events) == 1
        got.append(event_tuple(resp.events[0]))
    # M13: a creation is version 1 / create == mod; M12: a DELETE's kv is key + mod_revision.
    assert got == [
        (PUT, kv_(key, r1, r1, 1, b"v1"), None),
        (PUT, kv_(key, r1, r2, 2, b"v2"), None),
        (DELETE, kv_(key, 0, r3, 0, b""), None),
    ]
    # M09: re-created key starts over.
    r4 = await put(kv, key, b"v3")
    (ev,) = await w.events(1)
    assert event_tuple(ev) == (PUT, kv_(key, r4, r4, 1, b"v3"), None)


async def test_prev_kv(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    await w.watch(p, prefix_end(p), prev_kv=True)
    r1 = await put(kv, p + b"a", b"1")
    r2 = await put(kv, p + b"a", b"2")
    r3 = await delete(kv, p + b"a")
    r4 = await put(kv, p + b"a", b"3")
    evs = [event_tuple(e) for e in await w.events(4)]
    # W17: updates and deletes carry the previous KeyValue; creations carry none.
    assert evs == [
        (PUT, kv_(p + b"a", r1, r1, 1, b"1"), None),
        (PUT, kv_(p + b"a", r1, r2, 2, b"2"), kv_(p + b"a", r1, r1, 1, b"1")),
        (DELETE, kv_(p + b"a", 0, r3, 0, b""), kv_(p + b"a", r1, r2, 2, b"2")),
        (PUT, kv_(p + b"a", r4, r4, 1, b"3"), None),
    ]


async def test_ranges_single_prefix_from_key(kv: GrpcDriver, w: WatchClient,
                                             prefix: str) -> None:
    p = prefix.encode()
    single = (await w.watch(p + b"b")).watch_id
    pre = (await w.watch(p + b"b", prefix_end(p + b"b"))).watch_id
    rng = (await w.watch(p + b"b", p + b"c")).watch_id
    from_key = (await w.watch(p + b"c", b"\x00")).watch_id
    writes = [p + b"a", p + b"b", p + b"b/x", p + b"bz", p + b"c", p + b"d"]
    revs = {k: await put(kv, k) for k in writes}
    want = {
        single: [p + b"b"],
        pre: [p + b"b", p + b"b/x", p + b"bz"],
        rng: [p + b"b", p + b"b/x", p + b"bz"],
        from_key: [p + b"c", p + b"d"],
    }
    total = sum(map(len, want.values()))
    got: dict[int, list[tuple[bytes, int]]] = {i: [] for i in want}
    while sum(map(len, got.values())) < total:
        r = await w.recv()
        got[r.watch_id].extend((e.kv.key, e.kv.mod_revision) for e in r.events)
    assert got == {i: [(k, revs[k]) for k in keys] for i, keys in want.items()}
    # The from-key watcher also sees keys after the prefix (other tests' keys may appear too).


# ---------------------------------------------------------------------------------------------
# start revisions: past, compacted, future


async def test_replay_then_live_no_gap(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    """W10: replay history from start_revision, then live events, no gap or duplicate, while a
    writer keeps writing during the switch."""
    p = prefix.encode()
    revs = [await put(kv, p + b"%03d" % i, b"h%d" % i) for i in range(30)]
    start = revs[10]

    async def writer() -> list[int]:
        out = []
        for i in range(30, 80):
            out.append(await put(kv, p + b"%03d" % i, b"l%d" % i))
        return out

    task = asyncio.create_task(writer())
    await w.watch(p, prefix_end(p), start_revision=start)
    live = await task
    want = revs[10:] + live
    evs = await w.events(len(want))
    assert [e.kv.mod_revision for e in evs] == want
    assert [e.kv.key for e in evs] == [p + b"%03d" % i for i in range(10, 80)]
    await w.expect_silence()


async def test_start_revision_zero_is_after_created(kv: GrpcDriver, w: WatchClient,
                                                    prefix: str) -> None:
    """W09: start 0 delivers exactly the events after the created header revision."""
    p = prefix.encode()
    await put(kv, p + b"before")
    created = await w.watch(p, prefix_end(p))
    r = await put(kv, p + b"after")
    (ev,) = await w.events(1)
    assert ev.kv.mod_revision == r == created.header.revision + 1


async def test_compacted_start_revision(target: Server, kv: GrpcDriver, w: WatchClient,
                                        prefix: str) -> None:
    p = prefix.encode()
    revs = [await put(kv, p + b"k", b"%d" % i) for i in range(5)]
    rc = revs[2]
    await compact(kv, rc)
    cur = await current(kv)

    # W08: start == compact revision is allowed and replays from it (prev_kv compacted away:
    # the version at rc - 1 is gone, so W17 allows omitting it).
    ok = await w.watch(p + b"k", start_revision=rc)
    assert not ok.canceled and ok.header.revision == cur
    evs = await w.events(3, ok.watch_id)
    assert [e.kv.mod_revision for e in evs] == revs[2:]

    # Below it: created, then canceled with compact_revision and no events.
    created = await w.watch(p + b"k", start_revision=rc - 1)
    assert not created.canceled and created.header.revision == cur
    r = await w.recv()
    assert r.watch_id == created.watch_id
    assert r.canceled and r.compact_revision == rc and not r.events and not r.created
    assert r.header.revision == 0  # H11
    await w.expect_silence()
    # The canceled watcher is gone: new writes reach only the first one.
    r5 = await put(kv, p + b"k")
    got = await w.recv()
    assert got.watch_id == ok.watch_id and got.events[0].kv.mod_revision == r5
    await w.expect_silence()


async def test_future_start_revision(target: Server, kv: GrpcDriver, w: WatchClient,
                                     prefix: str) -> None:
    p = prefix.encode()
    cur = await current(kv)
    created = await w.watch(p, prefix_end(p), start_revision=cur + 3, progress_notify=True)
    assert not created.canceled and created.header.revision == cur  # W11: accepted
    # W22: a stream whose watcher waits for a future revision gets no progress response.
    await w.progress()
    if target.kind == "etcdgw":
        await w.expect_silence()
    else:
        # etcd 3.4 answers (W11/W22 fixed in 3.5.22/3.6.2); whatever it sends is a progress.
        r = await w.recv()
        assert is_progress(r) and r.watch_id == -1
    revs = [await put(kv, p + b"%d" % i) for i in range(5)]
    assert revs[0] == cur + 1
    evs = await w.events(3, created.watch_id)
    assert [e.kv.mod_revision for e in evs] == revs[2:]


async def test_negative_start_revision(target: Server, kv: GrpcDriver, w: WatchClient,
                                       prefix: str) -> None:
    """W12 (3.6.6+): refused with the compaction text; etcd 3.4 accepts it as "from now"."""
    p = prefix.encode()
    await w.create(p, start_revision=-5)
    r = await w.recv()
    assert r.created
    if target.kind == "etcdgw":
        assert r.canceled and r.watch_id == -1 and r.cancel_reason == COMPACTED_REASON
    else:
        assert not r.canceled  # etcd 3.4 predates W12


# ---------------------------------------------------------------------------------------------
# filters, txn, cancel, ids, empty range


async def test_filters(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    noput = (await w.watch(p, prefix_end(p), filters=[NOPUT])).watch_id
    nodel = (await w.watch(p, prefix_end(p), filters=[NODELETE])).watch_id
    both = (await w.watch(p, prefix_end(p), filters=[NOPUT, NODELETE])).watch_id
    r1 = await put(kv, p + b"a")
    r2 = await delete(kv, p + b"a")
    r3 = await put(kv, p + b"b")
    seen: dict[int, list[tuple[int, int]]] = {noput: [], nodel: []}
    for _ in range(3):  # W18: a response left with no events is not sent
        r = await w.recv()
        seen[r.watch_id].extend((int(e.type), e.kv.mod_revision) for e in r.events)
    assert seen == {noput: [(DELETE, r2)], nodel: [(PUT, r1), (PUT, r3)]}
    assert both not in seen
    await w.expect_silence()


async def test_txn_events_in_one_response(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    await put(kv, p + b"z", b"old")
    wid = (await w.watch(p, prefix_end(p), prev_kv=True)).watch_id
    txn = await kv.txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=p + b"c", value=b"1")),
        pb.RequestOp(request_put=pb.PutRequest(key=p + b"a", value=b"2")),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=p + b"z")),
        pb.RequestOp(request_put=pb.PutRequest(key=p + b"b", value=b"3")),
    ]))
    rev = txn.header.revision
    r = await w.recv()
    # X11/W15/M06: one response, events in op order, all at the txn's revision.
    assert r.watch_id == wid and r.header.revision == rev
    assert [(int(e.type), e.kv.key, e.kv.mod_revision) for e in r.events] == [
        (PUT, p + b"c", rev), (PUT, p + b"a", rev), (DELETE, p + b"z", rev), (PUT, p + b"b", rev),
    ]
    assert kv_fields(r.events[2].prev_kv)[4] == b"old"
    # A DeleteRange of several keys: one DELETE per key, ascending, one response (D03).
    d = await delete(kv, p, prefix_end(p))
    r = await w.recv()
    assert r.header.revision == d
    assert [(int(e.type), e.kv.key) for e in r.events] == [
        (DELETE, p + b"a"), (DELETE, p + b"b"), (DELETE, p + b"c")]


async def test_cancel(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    a = (await w.watch(p + b"a")).watch_id
    b = (await w.watch(p + b"b")).watch_id
    cur = await current(kv)
    await w.cancel(a)
    r = await w.recv()
    # W19: canceled, with the current revision, then nothing more for that id.
    assert r.watch_id == a and r.canceled and not r.created and r.header.revision == cur
    assert r.compact_revision == 0 and not r.events
    await put(kv, p + b"a")
    rb = await put(kv, p + b"b")
    r = await w.recv()
    assert r.watch_id == b and r.events[0].kv.mod_revision == rb
    # Unknown id, and the same id twice: no response.
    await w.cancel(12345)
    await w.cancel(a)
    await w.expect_silence()


async def test_watch_ids(target: Server, kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    cur = await current(kv)
    # W05: a client-chosen id is used verbatim; the counter skips ids in use.
    assert (await w.watch(p + b"x", watch_id=1)).watch_id == 1
    assert (await w.watch(p + b"y")).watch_id == 0
    assert (await w.watch(p + b"z")).watch_id == 2
    assert (await w.watch(p + b"w", watch_id=100)).watch_id == 100
    assert (await w.watch(p + b"v")).watch_id == 3
    # Duplicate id: created + canceled, id -1, the reason; the existing watcher is untouched.
    dup = await w.watch(p + b"other", watch_id=100)
    assert (dup.watch_id, dup.created, dup.canceled) == (-1, True, True)
    assert dup.cancel_reason == DUPLICATE_REASON
    assert dup.header.revision == cur
    # Canceled ids are not handed out again by the counter.
    await w.cancel(0)
    assert (await w.recv()).canceled
    assert (await w.watch(p + b"u")).watch_id == 4
    r = await put(kv, p + b"w")
    got = await w.recv()
    assert got.watch_id == 100 and got.events[0].kv.mod_revision == r


async def test_empty_range(target: Server, kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    cur = await current(kv)
    await w.create(p + b"b", p + b"a")
    r = await w.recv()
    # W13: key >= range_end → created + canceled, id -1, "mvcc: watcher range is empty".
    assert (r.created, r.canceled, r.watch_id) == (True, True, -1)
    assert r.cancel_reason == EMPTY_RANGE_REASON
    assert r.header.revision == cur
    await w.create(p + b"a", p + b"a")
    r = await w.recv()
    assert (r.created, r.canceled, r.watch_id) == (True, True, -1)
    # The stream stays usable; the refused create took no id.
    assert (await w.watch(p + b"a")).watch_id == 0


async def test_empty_key_is_zero_byte(kv: GrpcDriver, w: WatchClient) -> None:
    """K01: Watch treats an empty key as "\\x00" (with range_end "\\x00": everything)."""
    created = await w.watch(b"", b"\x00")
    assert not created.canceled
    r = await put(kv, b"\x00/empty-key-watch")
    (ev,) = await w.events(1)
    assert ev.kv.mod_revision == r


# ---------------------------------------------------------------------------------------------
# progress, ordering of created responses, half-close, unknown requests


async def test_progress_request(target: Server, kv: GrpcDriver, w: WatchClient,
                                prefix: str) -> None:
    p = prefix.encode()
    # W22: a stream without watchers gets nothing (etcd 3.4 answers with the current revision).
    await w.progress()
    if target.kind == "etcdgw":
        await w.expect_silence()
    else:
        r = await w.recv()
        assert r.watch_id == -1 and is_progress(r)
    await w.watch(p, prefix_end(p))
    rev = await put(kv, p + b"a")
    await w.events(1)
    await w.progress()
    r = await w.recv()
    # Synced watchers: one response, watch_id -1, current revision, nothing else set (W24).
    assert r.watch_id == -1 and is_progress(r)
    assert r.header.revision == rev
    assert not r.created and not r.canceled and r.compact_revision == 0 and not r.events
    await w.expect_silence()


async def test_progress_after_events_on_stream(kv: GrpcDriver, w: WatchClient,
                                               prefix: str) -> None:
    """W23: a progress response comes after every event at or below its revision."""
    p = prefix.encode()
    await w.watch(p, prefix_end(p))
    revs = [await put(kv, p + b"%d" % i) for i in range(20)]
    await w.progress()
    seen: list[int] = []
    while True:
        r = await w.recv()
        if r.watch_id == -1:
            break
        seen.extend(e.kv.mod_revision for e in r.events)
    assert seen == revs and r.header.revision == revs[-1]


async def test_created_in_request_order(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    """W07: creates sent back to back are answered in request order (even a replaying one, a
    refused one and a future one in between)."""
    p = prefix.encode()
    r0 = await put(kv, p + b"k")
    ids = [10, 20, 0, 30, 0, 40]
    starts = [0, r0, 0, r0 + 100, 0, 0]
    for i, (wid, start) in enumerate(zip(ids, starts, strict=True)):
        await w.create(p + b"k%d" % i, start_revision=start, watch_id=wid)
    await w.create(p + b"b", p + b"a")  # refused (W13)
    await w.create(p + b"dup", watch_id=20)  # refused (W05)
    got: list[pb.WatchResponse] = []
    while len(got) < 8:  # a replaying watcher's events may come between them (W06)
        r = await w.recv()
        if r.created:
            got.append(r)
    assert [r.watch_id for r in got] == [10, 20, 0, 30, 1, 40, -1, -1]
    assert [r.canceled for r in got] == [False] * 6 + [True, True]


async def test_half_close_keeps_delivering(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    p = prefix.encode()
    await w.watch(p, prefix_end(p))
    await w.half_close()
    revs = [await put(kv, p + b"%d" % i) for i in range(3)]
    evs = await w.events(3)
    assert [e.kv.mod_revision for e in evs] == revs


async def test_empty_request_ignored(kv: GrpcDriver, w: WatchClient, prefix: str) -> None:
    """W01: a request with no union set is ignored; the stream stays open."""
    p = prefix.encode()
    await w.send(pb.WatchRequest())
    await w.expect_silence()
    await w.watch(p)
    r = await put(kv, p)
    assert (await w.events(1))[0].kv.mod_revision == r


async def test_many_streams_one_connection(target: Server, kv: GrpcDriver,
                                           prefix: str) -> None:
    """W04/T14: several streams on one connection each get their own ids and all events."""
    from grpclib.client import Channel

    p = prefix.encode()
    ch = Channel(target.host, target.port)
    clients = [WatchClient(ch) for _ in range(5)]
    try:
        for c in clients:
            await c.open()
            assert (await c.watch(p, prefix_end(p), prev_kv=True)).watch_id == 0
        revs = [await put(kv, p + b"%d" % i) for i in range(5)]
        for c in clients:
            assert [e.kv.mod_revision for e in await c.events(5)] == revs
    finally:
        for c in clients:
            await c.close()
        ch.close()


# ---------------------------------------------------------------------------------------------
# a slow consumer overtaken by compaction


async def test_compaction_overtakes_slow_watcher(target: Server, kv: GrpcDriver,
                                                 prefix: str) -> None:
    """W08 (slow watcher) / G04: a watcher that does not read falls behind; the store is then
    compacted past it. What it receives is a gap-free prefix of its events, then a cancel with
    the compact revision (or, if it was not behind after all, everything)."""
    p = prefix.encode()
    value = b"x" * 1024
    async with WatchClient.connect(target, window=65535) as w:
        await w.watch(p, prefix_end(p))
        w.pause()
        writes = [asyncio.ensure_future(put(kv, p + b"%04d" % i, value)) for i in range(1500)]
        revs = sorted(await asyncio.gather(*writes))
        await compact(kv, revs[-1])
        w.resume()
        seen: list[int] = []
        while True:
            r = await w.recv(timeout=20)
            if r.canceled:
                assert r.compact_revision == revs[-1] and not r.events
                break
            seen.extend(e.kv.mod_revision for e in r.events)
            if seen and seen[-1] == revs[-1]:
                break
        assert seen == revs[: len(seen)]
        if target.kind == "etcdgw":
            # etcdgw's queue takes 1024 responses; the watcher must have fallen behind.
            assert len(seen) < len(revs)


# ---------------------------------------------------------------------------------------------
# differential: one scripted scenario on etcd and on etcdgw, streams compared field by field


async def _scenario(server: Server, p: bytes) -> dict[str, object]:
    """Run the script on ``server``; return its stream with revisions relative to the start
    (cluster_id/member_id/raft_term dropped). Events are compared per watcher, flattened: how
    a catch-up is cut into responses may differ (W16), what is delivered may not."""
    kv = GrpcDriver.connect(server)
    base = await current(kv)

    def rel(x: int) -> int:
        return x - base if x > 0 else x

    def rkv(k: mvccpb.KeyValue | None) -> tuple[object, ...] | None:
        if k is None:
            return None
        return (k.key, rel(k.create_revision), rel(k.mod_revision), k.version, k.value, k.lease)

    try:
        for k in (b"a", b"b", b"c"):
            await put(kv, p + k, b"1")  # base+1 .. base+3
        async with WatchClient.connect(server) as w:
            creates: list[dict[str, object]] = [
                dict(key=p, range_end=prefix_end(p), prev_kv=True),
                dict(key=p + b"a", start_revision=base + 1, prev_kv=True),
                dict(key=p, range_end=prefix_end(p), filters=[NOPUT]),
                dict(key=p + b"b", range_end=b"\x00", filters=[NODELETE], watch_id=42),
                dict(key=p, range_end=prefix_end(p), start_revision=base + 8, prev_kv=True),
                dict(key=p + b"x", watch_id=42),  # duplicate (W05)
                dict(key=p + b"b", range_end=p + b"a"),  # empty range (W13)
                dict(key=p + b"c", start_revision=base + 2),
            ]
            for c in creates:
                await w.create(**c)  # type: ignore[arg-type]
            stream: list[pb.WatchResponse] = []

            async def until(pred: Callable[[pb.WatchResponse], bool]) -> None:
                while True:
                    try:
                        resp = await w.recv()
                    except AssertionError as exc:
                        raise AssertionError(f"{server.kind}: {exc}; so far: {stream}") from None
                    stream.append(resp)
                    if pred(resp):
                        return

            # Created responses in request order (W07); a replaying watcher's events may come
            # between them (W06 only orders a watcher's own responses).
            for _ in creates:
                await until(lambda resp: resp.created)
            # Let the two replaying watchers catch up first: etcd resyncs them only every
            # 100 ms, and a compaction would cancel one still behind (W08).
            while not {1, 4} <= {r.watch_id for r in stream if r.events}:
                await until(lambda resp: bool(resp.events))
            await put(kv, p + b"a", b"2")
            await kv.txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=p + b"b", value=b"2")),
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=p + b"c")),
                pb.RequestOp(request_put=pb.PutRequest(key=p + b"d", value=b"1")),
            ]))
            await delete(kv, p + b"a", p + b"c")
            await w.cancel(2)
            await put(kv, p + b"a", b"3")
            await put(kv, p + b"e", b"1")
            await put(kv, p + b"e", b"2")  # base + 9
            await w.cancel(12345)  # unknown: no response
            r = await put(kv, p + b"a", b"4")
            await compact(kv, r - 1)
            await w.create(p + b"a", start_revision=r - 2)  # below the compaction (W08)
            await until(lambda resp: resp.watch_id == 5 and resp.canceled)
            final = await delete(kv, p + b"e")
            await w.progress()
            await until(lambda resp: resp.watch_id == -1 and resp.header.revision == final)
            await w.expect_silence()
    finally:
        await kv.close()

    per_watcher: dict[int, list[object]] = {}
    order: list[object] = []
    for resp in stream:
        head = (rel(resp.header.revision), resp.watch_id, resp.created, resp.canceled,
                rel(resp.compact_revision), resp.cancel_reason, resp.fragment)
        if resp.created or resp.canceled or not resp.events:
            order.append(head)
            per_watcher.setdefault(resp.watch_id, []).append(head)
        else:
            per_watcher.setdefault(resp.watch_id, []).extend(
                (int(e.type), rkv(e.kv), rkv(e.prev_kv)) for e in resp.events)
    return {"control responses in order": order, "per watcher": per_watcher}


async def test_differential_watch_stream(etcd_server: Server, etcdgw_server: Server) -> None:
    """The same watch script on etcd and etcdgw: equal streams, field by field."""
    import uuid

    p = b"/watch-differential/" + uuid.uuid4().hex[:8].encode() + b"/"
    want = await _scenario(etcd_server, p)
    got = await _scenario(etcdgw_server, p)
    per_watcher: Any = want["per watcher"]
    assert len(per_watcher) == 8 and sum(map(len, per_watcher.values())) > 30  # not vacuous
    assert got == want
