"""kube-apiserver's etcd request patterns (contract K8S03-K8S09, K8S15), on etcd and etcdgw.

Each test replays what k8s.io/apiserver pkg/storage/etcd3 sends for one storage operation, as raw
KV requests over gRPC (``support.driver.GrpcDriver``), and checks every field kube-apiserver
reads from the answers. Tests run on "etcd" (Debian 3.4, which proves the test right) and on
"etcdgw". Servers are shared by the module, so keys live under the test's ``prefix`` and
revisions are read from responses; compactions only ever target revisions the test itself
created, at or after everything another test still reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.cosmos import target_with_cosmos
from support.driver import Failure, GrpcDriver
from support.procs import Server

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

pytestmark = pytest.mark.etcd

target = target_with_cosmos  # also on "etcdgw-cosmos": etcdgw on the Cosmos backend

COMPACTED = Failure(11, "etcdserver: mvcc: required revision has been compacted")  # E02, R04
FUTURE_REV = Failure(11, "etcdserver: mvcc: required revision is a future revision")  # E02, R03

MOD = pb.CompareCompareTarget.MOD
VERSION = pb.CompareCompareTarget.VERSION
EQUAL = pb.CompareCompareResult.EQUAL


@pytest.fixture
async def kv(target: Server) -> AsyncIterator[GrpcDriver]:
    driver = GrpcDriver.connect(target)
    try:
        yield driver
    finally:
        await driver.close()


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def mod_is(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(key=key, target=MOD, result=EQUAL, mod_revision=rev)


def put_op(key: bytes, value: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def get_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


def delete_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


async def ok_range(kv: GrpcDriver, request: pb.RangeRequest) -> pb.RangeResponse:
    resp = await kv.range(request)
    assert isinstance(resp, pb.RangeResponse), resp
    return resp


async def ok_txn(kv: GrpcDriver, request: pb.TxnRequest) -> pb.TxnResponse:
    resp = await kv.txn(request)
    assert isinstance(resp, pb.TxnResponse), resp
    return resp


async def ok_put(kv: GrpcDriver, key: bytes, value: bytes) -> int:
    resp = await kv.put(pb.PutRequest(key=key, value=value))
    assert isinstance(resp, pb.PutResponse), resp
    return resp.header.revision


async def current_revision(kv: GrpcDriver, prefix: bytes) -> int:
    """k8s GetCurrentResourceVersion: a Get of the (absent) prefix key itself (R15)."""
    return (await ok_range(kv, pb.RangeRequest(key=prefix.rstrip(b"/"), limit=1))).header.revision


async def create(kv: GrpcDriver, key: bytes, value: bytes) -> pb.TxnResponse:
    """k8s Create (K8S04): Txn{MOD(key) == 0; Put(key, value)}."""
    return await ok_txn(kv, pb.TxnRequest(compare=[mod_is(key, 0)], success=[put_op(key, value)]))


def kv_eq(got: mvccpb.KeyValue, key: bytes, value: bytes, create: int, mod: int, ver: int) -> None:
    assert got == mvccpb.KeyValue(
        key=key, value=value, create_revision=create, mod_revision=mod, version=ver, lease=0
    )


# ---------------------------------------------------------------------------------------------
# K8S03 Get


async def test_get_limit_1(kv: GrpcDriver, prefix: str) -> None:
    """K8S03: Range(key, limit=1, revision=0), linearizable; kvs[0] + header revision."""
    key = f"{prefix}pods/ns/a".encode()
    rev = await ok_put(kv, key, b"obj-a")
    await ok_put(kv, key + b"-sibling", b"not this one")

    resp = await ok_range(kv, pb.RangeRequest(key=key, limit=1))
    assert len(resp.kvs) == 1
    kv_eq(resp.kvs[0], key, b"obj-a", rev, rev, 1)
    assert resp.count == 1 and not resp.more
    assert resp.header.revision == rev + 1  # H05: current revision, not the object's

    # absent key -> NotFound: no kvs, count 0, no error (R15)
    missing = await ok_range(kv, pb.RangeRequest(key=key + b"/missing", limit=1))
    assert missing.kvs == [] and missing.count == 0 and not missing.more
    assert missing.header.revision == rev + 1


# ---------------------------------------------------------------------------------------------
# K8S04 Create


async def test_create_then_already_exists(kv: GrpcDriver, prefix: str) -> None:
    """K8S04: MOD(key)==0 guard; succeeded=false means AlreadyExists and writes nothing."""
    key = f"{prefix}pods/ns/web".encode()
    first = await create(kv, key, b"v1")
    assert first.succeeded
    assert len(first.responses) == 1 and first.responses[0].response_put is not None
    rv = first.header.revision  # the object's resourceVersion
    got = await ok_range(kv, pb.RangeRequest(key=key, limit=1))
    kv_eq(got.kvs[0], key, b"v1", rv, rv, 1)
    assert got.header.revision == rv

    again = await create(kv, key, b"v2")
    assert not again.succeeded  # -> AlreadyExists
    assert again.responses == []  # empty failure branch
    assert again.header.revision == rv  # H08: nothing changed, current revision
    got = await ok_range(kv, pb.RangeRequest(key=key, limit=1))
    kv_eq(got.kvs[0], key, b"v1", rv, rv, 1)


# ---------------------------------------------------------------------------------------------
# K8S05 GuaranteedUpdate


async def test_guaranteed_update_retries_from_failure_range(kv: GrpcDriver, prefix: str) -> None:
    """K8S05: stale MOD fails; the retry uses responses[0].response_range.kvs, then succeeds."""
    key = f"{prefix}configmaps/ns/cm".encode()

    def update(rev: int, value: bytes) -> pb.TxnRequest:
        return pb.TxnRequest(
            compare=[mod_is(key, rev)], success=[put_op(key, value)], failure=[get_op(key)]
        )

    created = (await create(kv, key, b"gen1")).header.revision
    # another writer updates first
    ok = await ok_txn(kv, update(created, b"gen2-other"))
    assert ok.succeeded
    rev2 = ok.header.revision
    assert rev2 == created + 1
    assert ok.responses[0].response_put is not None

    # our update, still based on the stale revision
    stale = await ok_txn(kv, update(created, b"gen2-ours"))
    assert not stale.succeeded
    assert stale.header.revision == rev2  # nothing written
    assert len(stale.responses) == 1
    current = stale.responses[0].response_range
    assert current is not None
    assert current.count == 1 and len(current.kvs) == 1
    kv_eq(current.kvs[0], key, b"gen2-other", created, rev2, 2)

    # retry from what the failure branch returned
    retry = await ok_txn(kv, update(current.kvs[0].mod_revision, b"gen3-ours"))
    assert retry.succeeded
    assert retry.header.revision == rev2 + 1  # the new resourceVersion
    got = await ok_range(kv, pb.RangeRequest(key=key, limit=1))
    kv_eq(got.kvs[0], key, b"gen3-ours", created, rev2 + 1, 3)


# ---------------------------------------------------------------------------------------------
# K8S06 Delete


async def test_delete_with_mod_precondition(kv: GrpcDriver, prefix: str) -> None:
    """K8S06: Txn{MOD(key)==rev; DeleteRange(key); else Range(key)}."""
    key = f"{prefix}secrets/ns/s".encode()

    def delete(rev: int) -> pb.TxnRequest:
        return pb.TxnRequest(
            compare=[mod_is(key, rev)], success=[delete_op(key)], failure=[get_op(key)]
        )

    rev1 = (await create(kv, key, b"one")).header.revision
    rev2 = await ok_put(kv, key, b"two")

    stale = await ok_txn(kv, delete(rev1))
    assert not stale.succeeded and stale.header.revision == rev2
    rr = stale.responses[0].response_range
    assert rr is not None
    kv_eq(rr.kvs[0], key, b"two", rev1, rev2, 2)

    done = await ok_txn(kv, delete(rev2))
    assert done.succeeded
    assert done.header.revision == rev2 + 1  # the deleted object's resourceVersion
    dr = done.responses[0].response_delete_range
    assert dr is not None and dr.deleted == 1 and dr.prev_kvs == []

    gone = await ok_range(kv, pb.RangeRequest(key=key, limit=1))
    assert gone.kvs == [] and gone.count == 0 and gone.header.revision == rev2 + 1
    # the object is still readable at its last revision (M11)
    old = await ok_range(kv, pb.RangeRequest(key=key, revision=rev2))
    kv_eq(old.kvs[0], key, b"two", rev1, rev2, 2)

    # deleting again with the old precondition: absent key, MOD == 0 != rev2 -> failure branch
    again = await ok_txn(kv, delete(rev2))
    assert not again.succeeded and again.header.revision == rev2 + 1
    rr = again.responses[0].response_range
    assert rr is not None and rr.kvs == [] and rr.count == 0


# ---------------------------------------------------------------------------------------------
# K8S07 paged List


async def test_paged_list_pinned_revision(kv: GrpcDriver, prefix: str) -> None:
    """K8S07 + R06/R07/R16: limit, pinned revision, continue = last key + "\\x00"."""
    base = f"{prefix}pods/".encode()
    end = prefix_end(base)
    names = [b"ns1/a", b"ns1/b", b"ns1/b\x00x", b"ns1/c", b"ns2/a", b"ns2/z", b"ns3/q"]
    for name in names:
        await ok_put(kv, base + name, b"pod " + name)
    await ok_put(kv, prefix_end(base) + b"outside", b"not listed")  # just past the range
    unpaged = await ok_range(kv, pb.RangeRequest(key=base, range_end=end))
    assert [k.key for k in unpaged.kvs] == [base + n for n in names]
    assert unpaged.count == len(names) and not unpaged.more

    first = await ok_range(kv, pb.RangeRequest(key=base, range_end=end, limit=3))
    pinned = first.header.revision
    assert [k.key for k in first.kvs] == [base + n for n in names[:3]]
    assert first.more and first.count == len(names)  # R06, R07

    # writes after the first page must not show up in later pages (pinned revision)
    await ok_put(kv, base + b"ns1/bb", b"new pod")  # sorts inside page 2
    await ok_put(kv, base + b"ns2/a", b"modified")
    resp = await kv.delete_range(pb.DeleteRangeRequest(key=base + b"ns3/q"))
    assert isinstance(resp, pb.DeleteRangeResponse) and resp.deleted == 1
    now = resp.header.revision
    assert now == pinned + 3

    pages = [first]
    got = list(first.kvs)
    while pages[-1].more:
        cont = pages[-1].kvs[-1].key + b"\x00"
        page = await ok_range(
            kv, pb.RangeRequest(key=cont, range_end=end, limit=3, revision=pinned)
        )
        remaining = len([n for n in names if base + n >= cont])
        assert page.count == remaining  # R07: keys in [cont, end) at the pinned revision
        assert page.more == (remaining > 3)  # R06
        assert page.header.revision == now  # H05: current, not the pinned revision
        pages.append(page)
        got.extend(page.kvs)
    assert len(pages) == 3
    assert [len(p.kvs) for p in pages] == [3, 3, 1]
    assert got == list(unpaged.kvs)  # R16: no duplicates, no gaps, values as of pinned

    # k8s >= 1.31 decides hasMore from count: len(kvs) < count
    assert [len(p.kvs) < p.count for p in pages] == [True, True, False]


async def test_list_with_limit_larger_than_result(kv: GrpcDriver, prefix: str) -> None:
    """A page size above the number of objects: everything, more=false, count exact."""
    base = f"{prefix}nodes/".encode()
    for i in range(3):
        await ok_put(kv, base + b"n%d" % i, b"node")
    resp = await ok_range(kv, pb.RangeRequest(key=base, range_end=prefix_end(base), limit=500))
    assert len(resp.kvs) == 3 and resp.count == 3 and not resp.more


# ---------------------------------------------------------------------------------------------
# K8S08 list errors


async def test_list_at_compacted_revision(kv: GrpcDriver, prefix: str) -> None:
    """K8S08: a page at a compacted revision -> OUT_OF_RANGE compacted (410 Expired)."""
    base = f"{prefix}events/".encode()
    end = prefix_end(base)
    for i in range(4):
        await ok_put(kv, base + b"e%d" % i, b"event")
    first = await ok_range(kv, pb.RangeRequest(key=base, range_end=end, limit=2))
    pinned = first.header.revision
    assert first.more

    compact_at = await ok_put(kv, base + b"e9", b"later")  # a revision > pinned
    resp = await kv.compact(pb.CompactionRequest(revision=compact_at))
    assert isinstance(resp, pb.CompactionResponse), resp
    assert resp.header.revision == compact_at  # C06

    cont = first.kvs[-1].key + b"\x00"
    page = await kv.range(pb.RangeRequest(key=cont, range_end=end, limit=2, revision=pinned))
    assert page == COMPACTED
    # the compact revision itself is readable (R04); reads after it too
    at = await ok_range(kv, pb.RangeRequest(key=base, range_end=end, revision=compact_at))
    assert at.count == 5
    assert (
        await kv.range(pb.RangeRequest(key=base, range_end=end, revision=compact_at - 1))
        == COMPACTED
    )


async def test_list_at_future_revision(kv: GrpcDriver, prefix: str) -> None:
    """K8S08: a revision above the current one -> OUT_OF_RANGE future (TooLargeResourceVersion)."""
    base = f"{prefix}leases/".encode()
    rev = await ok_put(kv, base + b"l", b"x")
    for future in (rev + 1, rev + 1000):
        got = await kv.range(
            pb.RangeRequest(key=base, range_end=prefix_end(base), limit=10, revision=future)
        )
        assert got == FUTURE_REV
    # single-object Get at a future revision fails the same way
    assert await kv.range(pb.RangeRequest(key=base + b"l", revision=rev + 1)) == FUTURE_REV
    # and the current revision is fine
    ok = await ok_range(kv, pb.RangeRequest(key=base, range_end=prefix_end(base), revision=rev))
    assert ok.count == 1


# ---------------------------------------------------------------------------------------------
# K8S09 GetCurrentResourceVersion


async def test_current_resource_version_from_absent_prefix_key(kv: GrpcDriver, prefix: str) -> None:
    """K8S09 + R15: a Get of the absent resource prefix key returns the current revision."""
    base = f"{prefix}deployments".encode()  # the non-recursive key k8s asks for
    rev = await ok_put(kv, base + b"/ns/d1", b"deployment")
    resp = await ok_range(kv, pb.RangeRequest(key=base, limit=1))
    assert resp.kvs == [] and resp.count == 0 and not resp.more
    assert resp.header.revision == rev
    # a write anywhere advances it
    other = await ok_put(kv, f"{prefix}unrelated".encode(), b"x")
    assert other == rev + 1
    assert (await ok_range(kv, pb.RangeRequest(key=base, limit=1))).header.revision == other
    # reads and failed/no-op writes do not (M04)
    noop = await ok_txn(kv, pb.TxnRequest(compare=[mod_is(base, 12345)], success=[delete_op(base)]))
    assert not noop.succeeded and noop.header.revision == other
    dr = await kv.delete_range(pb.DeleteRangeRequest(key=base))
    assert isinstance(dr, pb.DeleteRangeResponse) and dr.deleted == 0
    assert dr.header.revision == other  # H07
    assert await current_revision(kv, f"{prefix}deployments/".encode()) == other


# ---------------------------------------------------------------------------------------------
# K8S15 compactor


COMPACT_REV_KEY = b"compact_rev_key"


async def compactor_cycle(kv: GrpcDriver, t: int, rev: int) -> tuple[int, int, object]:
    """One round of k8s.io/apiserver pkg/storage/etcd3/compact.go ``compact(ctx, client, t, rev)``.

    Returns (new t, current revision, Compact outcome or None when nothing was compacted).
    """
    resp = await ok_txn(
        kv,
        pb.TxnRequest(
            compare=[pb.Compare(key=COMPACT_REV_KEY, target=VERSION, result=EQUAL, version=t)],
            success=[put_op(COMPACT_REV_KEY, str(rev).encode())],
            failure=[get_op(COMPACT_REV_KEY)],
        ),
    )
    cur_rev = resp.header.revision
    if not resp.succeeded:
        rr = resp.responses[0].response_range
        assert rr is not None
        return rr.kvs[0].version, cur_rev, None
    if rev == 0:  # no compaction on bootstrap
        return t + 1, cur_rev, None
    return t + 1, cur_rev, await kv.compact(pb.CompactionRequest(revision=rev))


async def test_compactor(kv: GrpcDriver, prefix: str) -> None:
    """K8S15: Txn{VERSION(compact_rev_key)==t; Put(rev); else Range}, then Compact(rev)."""
    key = f"{prefix}x".encode()
    await ok_put(kv, key, b"1")

    # apiserver A, bootstrap: t=0, rev=0 -> the key is created, nothing compacted
    t_a, seen, outcome = await compactor_cycle(kv, 0, 0)
    assert (t_a, outcome) == (1, None)
    doc = await ok_range(kv, pb.RangeRequest(key=COMPACT_REV_KEY))
    assert doc.kvs[0].value == b"0" and doc.kvs[0].version == 1
    assert seen == doc.kvs[0].mod_revision  # the header revision of the successful txn

    old = await ok_put(kv, key, b"2")
    await ok_put(kv, key, b"3")

    # apiserver B starts late with t=0: its txn fails and it adopts the stored version
    t_b, _, outcome = await compactor_cycle(kv, 0, 0)
    assert (t_b, outcome) == (1, None)

    # A's next cycle compacts the revision it saw last cycle
    t_a, seen_a2, outcome = await compactor_cycle(kv, t_a, seen)
    assert t_a == 2
    assert isinstance(outcome, pb.CompactionResponse), outcome
    assert outcome.header.revision == seen_a2  # C06: Compact does not advance the revision
    doc = await ok_range(kv, pb.RangeRequest(key=COMPACT_REV_KEY))
    assert doc.kvs[0].value == str(seen).encode() and doc.kvs[0].version == 2
    assert await kv.range(pb.RangeRequest(key=key, revision=seen - 1)) == COMPACTED
    at = await ok_range(kv, pb.RangeRequest(key=key, revision=seen))  # R04
    assert at.kvs[0].value == b"1"
    assert (await ok_range(kv, pb.RangeRequest(key=key, revision=old))).kvs[0].value == b"2"

    # B, one cycle behind (t=1 but the key is at version 2): fails, adopts t=2, no compaction
    t_b, _, outcome = await compactor_cycle(kv, t_b, seen)
    assert (t_b, outcome) == (2, None)

    # compacting the same revision again (a racing compactor) is OUT_OF_RANGE compacted (C02)
    assert await kv.compact(pb.CompactionRequest(revision=seen)) == COMPACTED
    # and a revision in the future is OUT_OF_RANGE future (C03)
    now = await current_revision(kv, prefix.encode())
    assert await kv.compact(pb.CompactionRequest(revision=now + 1)) == FUTURE_REV
    # the compactor key's next cycle with B's t succeeds and compacts up to A's last header rev
    t_b, _, outcome = await compactor_cycle(kv, t_b, seen_a2)
    assert t_b == 3 and isinstance(outcome, pb.CompactionResponse), outcome
    assert await kv.range(pb.RangeRequest(key=key, revision=seen_a2 - 1)) == COMPACTED
