"""etcdgw.wire and the spliced responses built from it, checked against betterproto2.

The spliced bytes must be what betterproto2 (i.e. canonical proto3, field-number order, zero
scalars omitted) emits for the same message: equal after parsing AND byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb
from etcdgw.mvcc.overlay import Overlay
from etcdgw.mvcc.range import execute_range
from etcdgw.mvcc.replica import Replica, Version
from etcdgw.mvcc.txn import evaluate_delete, evaluate_put, evaluate_txn
from etcdgw.wire import encode_kv, f_int, varint

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
CLUSTER_ID, MEMBER_ID, RAFT_TERM = 0x1234_5678_9ABC_DEF0, 2**63 - 5, 1


def header_bytes(rev: int) -> bytes:
    """The store's header layout (cluster_id, member_id, revision, raft_term)."""
    return f_int(1, CLUSTER_ID) + f_int(2, MEMBER_ID) + f_int(3, rev) + f_int(4, RAFT_TERM)


def header_msg(rev: int) -> pb.ResponseHeader:
    return pb.ResponseHeader(
        cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=rev, raft_term=RAFT_TERM
    )


def kv_msg(v: Version, keys_only: bool = False) -> mvccpb.KeyValue:
    return mvccpb.KeyValue(
        key=v.key,
        create_revision=v.create,
        mod_revision=v.mod,
        version=v.version,
        value=b"" if keys_only else v.value,
        lease=v.lease,
    )


# -- varint ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (INT64_MAX, b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"),
        (-1, b"\xff" * 9 + b"\x01"),
        (INT64_MIN, b"\x80" * 9 + b"\x01"),
    ],
)
def test_varint_known_values(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded


@pytest.mark.parametrize("n", [-1, -2, -128, -(2**31), INT64_MIN])
def test_negative_int64_is_ten_bytes_like_betterproto2(n: int) -> None:
    # KeyValue.lease is int64 field 6: tag 0x30, then the varint.
    reference = bytes(mvccpb.KeyValue(lease=n))
    assert reference[0] == 0x30
    assert len(varint(n)) == 10
    assert varint(n) == reference[1:]


@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
def test_varint_matches_betterproto2_int64(n: int) -> None:
    reference = bytes(mvccpb.KeyValue(lease=n))
    assert (b"\x30" + varint(n) if n else b"") == reference


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_matches_betterproto2_uint64(n: int) -> None:
    reference = bytes(pb.ResponseHeader(cluster_id=n))
    assert (b"\x08" + varint(n) if n else b"") == reference


# -- KeyValue -------------------------------------------------------------------------------

int64s = st.one_of(
    st.just(0),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=1, max_value=INT64_MAX),
    st.sampled_from([127, 128, 2**31, 2**32, 2**62, INT64_MAX]),
)
leases = st.one_of(int64s, st.integers(min_value=INT64_MIN, max_value=-1))
kv_fields = st.fixed_dictionaries(
    {
        "key": st.binary(min_size=0, max_size=300),
        "create_revision": int64s,
        "mod_revision": int64s,
        "version": int64s,
        "value": st.one_of(st.just(b""), st.binary(max_size=300)),
        "lease": leases,
    }
)


@given(kv_fields)
def test_encode_kv_matches_betterproto2(fields: dict[str, Any]) -> None:
    ours = encode_kv(
        fields["key"],
        fields["create_revision"],
        fields["mod_revision"],
        fields["version"],
        fields["value"],
        fields["lease"],
    )
    assert ours == bytes(mvccpb.KeyValue(**fields))
    assert mvccpb.KeyValue.parse(ours) == mvccpb.KeyValue(**fields)


def test_encode_kv_large_value_length_prefix() -> None:
    value = bytes(range(256)) * 700  # 179200 bytes: a three-byte length varint
    ours = encode_kv(b"k", 1, 2**40, 3, value, 0)
    assert ours == bytes(
        mvccpb.KeyValue(key=b"k", create_revision=1, mod_revision=2**40, version=3, value=value)
    )


@given(kv_fields.filter(lambda f: f["version"] > 0))
def test_version_framing(fields: dict[str, Any]) -> None:
    v = Version(
        fields["key"],
        fields["mod_revision"],
        fields["create_revision"],
        fields["version"],
        fields["value"],
        fields["lease"],
    )
    # framed as RangeResponse.kvs (field 2)
    assert v.framed == bytes(pb.RangeResponse(kvs=[kv_msg(v)]))
    assert v.keys_only() == bytes(pb.RangeResponse(kvs=[kv_msg(v, keys_only=True)]))


def test_tombstone_is_delete_event_form() -> None:
    t = Version.tombstone(b"gone", 42)
    assert t.is_tombstone
    # Event.kv (field 2) of a DELETE event: only key and mod_revision (contract M12).
    event = bytes(
        mvccpb.Event(
            type=mvccpb.EventEventType.DELETE, kv=mvccpb.KeyValue(key=b"gone", mod_revision=42)
        )
    )
    assert event == b"\x08\x01" + t.framed


# -- spliced RangeResponse ------------------------------------------------------------------


Op = tuple[bytes, bytes | None, int]


def build_replica(ops: list[Op]) -> tuple[Replica, dict[bytes, Version]]:
    """Apply one put (value) or delete (None) per revision from 2 on; return the replica and
    the live versions at the end, computed independently."""
    rep = Replica()
    live: dict[bytes, Version] = {}
    rev = 1
    for key, value, lease in ops:
        prev = live.get(key)
        if value is None:
            if prev is None:
                continue
            rev += 1
            del live[key]
            rep.apply(rev, [Version.tombstone(key, rev)])
        else:
            rev += 1
            if prev is None:
                v = Version(key, rev, rev, 1, value, lease)
            else:
                v = Version(key, rev, prev.create, prev.version + 1, value, lease)
            live[key] = v
            rep.apply(rev, [v])
    return rep, live


def expected_range(
    live: dict[bytes, Version], req: pb.RangeRequest, header_rev: int
) -> pb.RangeResponse:
    """The response for the simple options used here: key ranges, limit, KEY sort order,
    keys_only, count_only (no filters, no other sort targets)."""
    if not req.range_end:
        found = [live[req.key]] if req.key in live else []
    elif req.range_end == b"\x00":
        found = [live[k] for k in sorted(live) if k >= req.key]
    else:
        found = [live[k] for k in sorted(live) if req.key <= k < req.range_end]
    count = len(found)
    if req.count_only:
        return pb.RangeResponse(header=header_msg(header_rev), count=count)
    if req.sort_order == pb.RangeRequestSortOrder.DESCEND:
        found.reverse()
    more = False
    if req.limit and len(found) > req.limit:
        found, more = found[: req.limit], True
    return pb.RangeResponse(
        header=header_msg(header_rev),
        kvs=[kv_msg(v, req.keys_only) for v in found],
        more=more,
        count=count,
    )


def check_range(rep: Replica, live: dict[bytes, Version], req: pb.RangeRequest) -> None:
    ours = execute_range(rep, req, rep.rev, header_bytes(rep.rev))
    want = expected_range(live, req, rep.rev)
    assert pb.RangeResponse.parse(ours) == want
    assert ours == bytes(want)


small_keys = st.sampled_from([b"a", b"b", b"c", b"ab", b"\x00", b"\xff", b"b\xff", b"d"])
range_reqs = st.builds(
    pb.RangeRequest,
    key=small_keys,
    range_end=st.sampled_from([b"", b"\x00", b"b", b"c", b"e", b"\xff\xff", b"a"]),
    limit=st.sampled_from([0, 0, 1, 2, 5]),
    sort_order=st.sampled_from([pb.RangeRequestSortOrder.NONE, pb.RangeRequestSortOrder.DESCEND]),
    keys_only=st.booleans(),
    count_only=st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(
            small_keys,
            st.one_of(st.none(), st.just(b""), st.binary(max_size=40)),
            st.sampled_from([0, 7, 2**40, -3]),
        ),
        max_size=30,
    ),
    req=range_reqs,
)
def test_execute_range_matches_betterproto2(
    ops: list[tuple[bytes, bytes | None, int]], req: pb.RangeRequest
) -> None:
    rep, live = build_replica(ops)
    check_range(rep, live, req)


def test_execute_range_500_keys_of_1kib() -> None:
    ops: list[tuple[bytes, bytes | None, int]] = [
        (b"/registry/pods/ns/%05d" % i, bytes([i % 251]) * 1024, 0 if i % 3 else 9000 + i)
        for i in range(500)
    ]
    # overwrite some, delete some, so create/mod/version differ
    ops += [(b"/registry/pods/ns/%05d" % i, b"x" * 1024, 0) for i in range(0, 500, 7)]
    ops += [(b"/registry/pods/ns/%05d" % i, None, 0) for i in range(3, 500, 11)]
    rep, live = build_replica(ops)
    prefix = b"/registry/pods/"
    full = pb.RangeRequest(key=prefix, range_end=b"/registry/pods0")
    ours = execute_range(rep, full, rep.rev, header_bytes(rep.rev))
    want = expected_range(live, full, rep.rev)
    assert len(want.kvs) == len(live) > 400
    assert ours == bytes(want)
    assert pb.RangeResponse.parse(ours) == want
    for req in (
        pb.RangeRequest(key=prefix, range_end=b"/registry/pods0", limit=100),
        pb.RangeRequest(key=prefix, range_end=b"/registry/pods0", keys_only=True),
        pb.RangeRequest(key=prefix, range_end=b"/registry/pods0", count_only=True),
        pb.RangeRequest(key=b"/registry/pods/ns/00250", range_end=b"\x00", limit=10),
    ):
        check_range(rep, live, req)


def test_execute_range_old_revision_header_is_current() -> None:
    rep, _ = build_replica([(b"a", b"1", 0), (b"a", b"2", 0), (b"b", b"3", 0)])
    assert rep.rev == 4
    ours = execute_range(rep, pb.RangeRequest(key=b"a", range_end=b"\x00"), 2, header_bytes(4))
    v2 = Version(b"a", 2, 2, 1, b"1", 0)
    want = pb.RangeResponse(header=header_msg(4), kvs=[kv_msg(v2)], count=1)
    assert ours == bytes(want)


# -- spliced Put / DeleteRange / Txn responses ----------------------------------------------


def no_lease(_lease: int) -> bool:
    return False


def test_put_response_with_prev_kv_matches_betterproto2() -> None:
    rep, live = build_replica([(b"k", b"old", 0)])
    res = evaluate_put(
        Overlay(rep), pb.PutRequest(key=b"k", value=b"new", prev_kv=True), no_lease, header_bytes
    )
    want = pb.PutResponse(header=header_msg(3), prev_kv=kv_msg(live[b"k"]))
    assert res.response == bytes(want)
    res = evaluate_put(Overlay(rep), pb.PutRequest(key=b"n", prev_kv=True), no_lease, header_bytes)
    assert res.response == bytes(pb.PutResponse(header=header_msg(3)))


def test_delete_response_with_prev_kvs_matches_betterproto2() -> None:
    rep, live = build_replica([(b"a", b"1", 0), (b"b", b"", 0), (b"c", b"3", 0)])
    res = evaluate_delete(
        Overlay(rep), pb.DeleteRangeRequest(key=b"a", range_end=b"c", prev_kv=True), header_bytes
    )
    want = pb.DeleteRangeResponse(
        header=header_msg(5), deleted=2, prev_kvs=[kv_msg(live[b"a"]), kv_msg(live[b"b"])]
    )
    assert res.response == bytes(want)
    res = evaluate_delete(Overlay(rep), pb.DeleteRangeRequest(key=b"zz"), header_bytes)
    assert res.response == bytes(pb.DeleteRangeResponse(header=header_msg(4)))


def test_txn_response_matches_betterproto2() -> None:
    rep, live = build_replica([(b"a", b"1", 0), (b"b", b"2", 0)])
    req = pb.TxnRequest(
        compare=[pb.Compare(key=b"a", target=pb.CompareCompareTarget.VALUE, value=b"1")],
        success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"a", range_end=b"\x00")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"3", prev_kv=True)),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"b", prev_kv=True)),
            pb.RequestOp(
                request_txn=pb.TxnRequest(
                    compare=[
                        pb.Compare(key=b"a", target=pb.CompareCompareTarget.VALUE, value=b"no")
                    ],
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=b"x"))],
                    failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"c"))],
                )
            ),
        ],
    )
    res = evaluate_txn(Overlay(rep), req, no_lease, header_bytes)
    c = mvccpb.KeyValue(key=b"c", create_revision=4, mod_revision=4, version=1, value=b"3")
    want = pb.TxnResponse(
        header=header_msg(4),
        succeeded=True,
        responses=[
            pb.ResponseOp(
                response_range=pb.RangeResponse(
                    header=pb.ResponseHeader(revision=3),
                    kvs=[kv_msg(live[b"a"]), kv_msg(live[b"b"])],
                    count=2,
                )
            ),
            pb.ResponseOp(response_put=pb.PutResponse(header=pb.ResponseHeader(revision=4))),
            pb.ResponseOp(
                response_delete_range=pb.DeleteRangeResponse(
                    header=pb.ResponseHeader(revision=4), deleted=1, prev_kvs=[kv_msg(live[b"b"])]
                )
            ),
            pb.ResponseOp(
                response_txn=pb.TxnResponse(
                    header=pb.ResponseHeader(),
                    succeeded=False,
                    responses=[
                        pb.ResponseOp(
                            response_range=pb.RangeResponse(
                                header=pb.ResponseHeader(revision=4), kvs=[c], count=1
                            )
                        )
                    ],
                )
            ),
        ],
    )
    assert pb.TxnResponse.parse(res.response) == want
    assert res.response == bytes(want)
    assert res.rev == 4 and len(res.changes) == 2
