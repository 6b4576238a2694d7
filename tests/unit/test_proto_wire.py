"""Cross-check our .proto schema and betterproto2 code against google protobuf.

Our .proto files are compiled with grpc_tools.protoc into a descriptor set and
loaded into a PRIVATE descriptor pool (never the default one: python-etcd3
registers etcd's own mvccpb/etcdserverpb files there, and the symbols would
clash). Each case builds the same message twice, once with betterproto2 and
once independently with upb, and demands identical bytes both ways.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import betterproto2
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from support.catalogue import DECLARED_METHODS

from etcdgw._proto import authpb, etcdserverpb, mvccpb
from etcdgw.server.codec import CodecDecodeError, EtcdCodec, Preencoded

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"

UpbFactory = Callable[[str], Any]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    out = tmp_path_factory.mktemp("descriptors") / "etcd.pb"
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *files,
        ],
        check=True,
        cwd=PROTO_DIR,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


@pytest.fixture(scope="module")
def upb(pool: descriptor_pool.DescriptorPool) -> UpbFactory:
    def get(full_name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    return get


def header() -> etcdserverpb.ResponseHeader:
    return etcdserverpb.ResponseHeader(
        cluster_id=2**64 - 1, member_id=0x8E9E05C52164694D, revision=2**62, raft_term=7
    )


HEADER = {
    "cluster_id": 2**64 - 1,
    "member_id": 0x8E9E05C52164694D,
    "revision": 2**62,
    "raft_term": 7,
}

KV = {
    "key": b"/registry/pods/\x00\xff",
    "create_revision": 3,
    "mod_revision": 9,
    "version": 4,
    "value": b"\x00v\xff",
    "lease": -1,
}


def kv() -> mvccpb.KeyValue:
    return mvccpb.KeyValue(**KV)


# (betterproto2 message, upb full name, upb constructor kwargs)
CASES: list[tuple[str, Callable[[], betterproto2.Message], str, dict[str, Any]]] = [
    ("KeyValue", kv, "mvccpb.KeyValue", KV),
    (
        "RangeRequest",
        lambda: etcdserverpb.RangeRequest(
            key=b"a",
            range_end=b"\x00",
            limit=10,
            revision=-1,
            sort_order=etcdserverpb.RangeRequestSortOrder.DESCEND,
            sort_target=etcdserverpb.RangeRequestSortTarget.VALUE,
            serializable=True,
            keys_only=True,
            count_only=True,
            min_mod_revision=1,
            max_mod_revision=2,
            min_create_revision=3,
            max_create_revision=4,
        ),
        "etcdserverpb.RangeRequest",
        {
            "key": b"a",
            "range_end": b"\x00",
            "limit": 10,
            "revision": -1,
            "sort_order": 2,
            "sort_target": 4,
            "serializable": True,
            "keys_only": True,
            "count_only": True,
            "min_mod_revision": 1,
            "max_mod_revision": 2,
            "min_create_revision": 3,
            "max_create_revision": 4,
        },
    ),
    (
        "PutRequest",
        lambda: etcdserverpb.PutRequest(
            key=b"k",
            value=b"v",
            lease=2**63 - 1,
            prev_kv=True,
            ignore_value=True,
            ignore_lease=True,
        ),
        "etcdserverpb.PutRequest",
        {
            "key": b"k",
            "value": b"v",
            "lease": 2**63 - 1,
            "prev_kv": True,
            "ignore_value": True,
            "ignore_lease": True,
        },
    ),
    (
        "TxnRequest",
        lambda: etcdserverpb.TxnRequest(
            compare=[
                etcdserverpb.Compare(
                    result=etcdserverpb.CompareCompareResult.NOT_EQUAL,
                    target=etcdserverpb.CompareCompareTarget.MOD,
                    key=b"k",
                    mod_revision=-3,
                    range_end=b"z",
                ),
                # a zero operand inside the oneof is still present on the wire
                etcdserverpb.Compare(key=b"k", version=0),
                etcdserverpb.Compare(
                    target=etcdserverpb.CompareCompareTarget.VALUE, key=b"k", value=b""
                ),
            ],
            success=[
                etcdserverpb.RequestOp(request_put=etcdserverpb.PutRequest(key=b"k", lease=-5)),
                etcdserverpb.RequestOp(
                    request_txn=etcdserverpb.TxnRequest(
                        compare=[etcdserverpb.Compare(key=b"n", lease=-9)],
                        failure=[
                            etcdserverpb.RequestOp(
                                request_delete_range=etcdserverpb.DeleteRangeRequest(
                                    key=b"d", range_end=b"e", prev_kv=True
                                )
                            )
                        ],
                    )
                ),
            ],
            failure=[
                etcdserverpb.RequestOp(request_range=etcdserverpb.RangeRequest(key=b"k")),
                etcdserverpb.RequestOp(),  # no oneof member set
            ],
        ),
        "etcdserverpb.TxnRequest",
        {
            "compare": [
                {"result": 3, "target": 2, "key": b"k", "mod_revision": -3, "range_end": b"z"},
                {"key": b"k", "version": 0},
                {"target": 3, "key": b"k", "value": b""},
            ],
            "success": [
                {"request_put": {"key": b"k", "lease": -5}},
                {
                    "request_txn": {
                        "compare": [{"key": b"n", "lease": -9}],
                        "failure": [
                            {
                                "request_delete_range": {
                                    "key": b"d",
                                    "range_end": b"e",
                                    "prev_kv": True,
                                }
                            }
                        ],
                    }
                },
            ],
            "failure": [{"request_range": {"key": b"k"}}, {}],
        },
    ),
    (
        "WatchRequest.create",
        lambda: etcdserverpb.WatchRequest(
            create_request=etcdserverpb.WatchCreateRequest(
                key=b"/registry/",
                range_end=b"/registry0",
                start_revision=42,
                progress_notify=True,
                filters=[
                    etcdserverpb.WatchCreateRequestFilterType.NOPUT,
                    etcdserverpb.WatchCreateRequestFilterType.NODELETE,
                ],
                prev_kv=True,
                watch_id=-1,
                fragment=True,
            )
        ),
        "etcdserverpb.WatchRequest",
        {
            "create_request": {
                "key": b"/registry/",
                "range_end": b"/registry0",
                "start_revision": 42,
                "progress_notify": True,
                "filters": [0, 1],
                "prev_kv": True,
                "watch_id": -1,
                "fragment": True,
            }
        },
    ),
    (
        "WatchRequest.cancel",
        lambda: etcdserverpb.WatchRequest(
            cancel_request=etcdserverpb.WatchCancelRequest(watch_id=5)
        ),
        "etcdserverpb.WatchRequest",
        {"cancel_request": {"watch_id": 5}},
    ),
    (
        "WatchRequest.progress",
        lambda: etcdserverpb.WatchRequest(progress_request=etcdserverpb.WatchProgressRequest()),
        "etcdserverpb.WatchRequest",
        {"progress_request": {}},
    ),
    (
        "WatchResponse",
        lambda: etcdserverpb.WatchResponse(
            header=header(),
            watch_id=-1,
            created=True,
            canceled=True,
            compact_revision=5,
            cancel_reason="mvcc: watcher range is empty",
            fragment=True,
            events=[
                mvccpb.Event(type=mvccpb.EventEventType.PUT, kv=kv()),
                mvccpb.Event(
                    type=mvccpb.EventEventType.DELETE,
                    kv=mvccpb.KeyValue(key=b"x", mod_revision=10),
                    prev_kv=kv(),
                ),
            ],
        ),
        "etcdserverpb.WatchResponse",
        {
            "header": HEADER,
            "watch_id": -1,
            "created": True,
            "canceled": True,
            "compact_revision": 5,
            "cancel_reason": "mvcc: watcher range is empty",
            "fragment": True,
            "events": [
                {"type": 0, "kv": KV},
                {"type": 1, "kv": {"key": b"x", "mod_revision": 10}, "prev_kv": KV},
            ],
        },
    ),
    (
        "LeaseGrantResponse",
        lambda: etcdserverpb.LeaseGrantResponse(header=header(), id=7587, ttl=60, error="e"),
        "etcdserverpb.LeaseGrantResponse",
        {"header": HEADER, "ID": 7587, "TTL": 60, "error": "e"},
    ),
    (
        "LeaseTimeToLiveResponse",
        lambda: etcdserverpb.LeaseTimeToLiveResponse(
            header=header(), id=1, ttl=-1, granted_ttl=30, keys=[b"a", b""]
        ),
        "etcdserverpb.LeaseTimeToLiveResponse",
        {"header": HEADER, "ID": 1, "TTL": -1, "grantedTTL": 30, "keys": [b"a", b""]},
    ),
    (
        "StatusResponse",
        lambda: etcdserverpb.StatusResponse(
            header=header(),
            version="3.5.17",
            db_size=4096,
            leader=2**64 - 2,
            raft_index=11,
            raft_term=7,
            raft_applied_index=11,
            errors=["memberID:1 alarm:NOSPACE"],
            db_size_in_use=2048,
            is_learner=True,
            storage_version="3.5.0",
            db_size_quota=2 * 1024**3,
            downgrade_info=etcdserverpb.DowngradeInfo(enabled=True, target_version="3.4.0"),
        ),
        "etcdserverpb.StatusResponse",
        {
            "header": HEADER,
            "version": "3.5.17",
            "dbSize": 4096,
            "leader": 2**64 - 2,
            "raftIndex": 11,
            "raftTerm": 7,
            "raftAppliedIndex": 11,
            "errors": ["memberID:1 alarm:NOSPACE"],
            "dbSizeInUse": 2048,
            "isLearner": True,
            "storageVersion": "3.5.0",
            "dbSizeQuota": 2 * 1024**3,
            "downgradeInfo": {"enabled": True, "targetVersion": "3.4.0"},
        },
    ),
    (
        "MemberListResponse",
        lambda: etcdserverpb.MemberListResponse(
            header=header(),
            members=[
                etcdserverpb.Member(
                    id=2**64 - 1,
                    name="etcdgw",
                    peer_ur_ls=["http://127.0.0.1:2380"],
                    client_ur_ls=["http://127.0.0.1:2379", "https://h:2379"],
                    is_learner=False,
                )
            ],
        ),
        "etcdserverpb.MemberListResponse",
        {
            "header": HEADER,
            "members": [
                {
                    "ID": 2**64 - 1,
                    "name": "etcdgw",
                    "peerURLs": ["http://127.0.0.1:2380"],
                    "clientURLs": ["http://127.0.0.1:2379", "https://h:2379"],
                }
            ],
        },
    ),
    (
        "AuthRoleGetResponse",
        lambda: etcdserverpb.AuthRoleGetResponse(
            header=header(),
            perm=[
                authpb.Permission(
                    perm_type=authpb.PermissionType.READWRITE, key=b"a", range_end=b"b"
                ),
                authpb.Permission(key=b"\x00", range_end=b"\x00"),
            ],
        ),
        "etcdserverpb.AuthRoleGetResponse",
        {
            "header": HEADER,
            "perm": [
                {"permType": 2, "key": b"a", "range_end": b"b"},
                {"key": b"\x00", "range_end": b"\x00"},
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("make", "full_name", "fields"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_betterproto2_and_upb_agree(
    upb: UpbFactory,
    make: Callable[[], betterproto2.Message],
    full_name: str,
    fields: dict[str, Any],
) -> None:
    ours = make()
    theirs = upb(full_name)(**fields)
    wire = bytes(ours)
    # Same bytes either way (both encoders emit fields in number order).
    assert wire == theirs.SerializeToString(deterministic=True)
    # betterproto2 bytes -> upb: identical message.
    assert upb(full_name).FromString(wire) == theirs
    # upb bytes -> betterproto2: identical message.
    assert type(ours).parse(theirs.SerializeToString()) == ours


@pytest.mark.parametrize(
    ("message", "prefix"),
    [
        (etcdserverpb.RangeRequest(max_create_revision=1), b"\x68\x01"),  # field 13, varint
        (etcdserverpb.Compare(range_end=b"x"), b"\x82\x04\x01x"),  # field 64, len
        (etcdserverpb.WatchResponse(events=[mvccpb.Event()]), b"\x5a\x00"),  # field 11, len
        (etcdserverpb.StatusResponse(db_size_quota=1), b"\x60\x01"),  # field 12, varint
        (etcdserverpb.StatusResponse(downgrade_info=etcdserverpb.DowngradeInfo()), b"\x6a\x00"),
        (etcdserverpb.WatchCreateRequest(fragment=True), b"\x40\x01"),  # field 8
        (etcdserverpb.LeaseTimeToLiveResponse(granted_ttl=1), b"\x20\x01"),  # field 4
        (etcdserverpb.HashKvResponse(hash_revision=1), b"\x20\x01"),  # field 4
        (etcdserverpb.AuthUserAddRequest(hashed_password="h"), b"\x22\x01h"),  # field 4
        (etcdserverpb.AlarmRequest(member_id=1), b"\x10\x01"),  # field 2
        (etcdserverpb.RequestOp(request_txn=etcdserverpb.TxnRequest()), b"\x22\x00"),  # field 4
        (mvccpb.KeyValue(lease=1), b"\x30\x01"),  # field 6
        (authpb.User(options=authpb.UserAddOptions(no_password=True)), b"\x22\x02\x08\x01"),
    ],
)
def test_exact_field_numbers(message: betterproto2.Message, prefix: bytes) -> None:
    assert bytes(message) == prefix


def test_negative_int64_is_ten_byte_varint() -> None:
    assert bytes(etcdserverpb.PutRequest(lease=-1)) == b"\x18" + b"\xff" * 9 + b"\x01"


def test_oneof_which(upb: UpbFactory) -> None:
    op = etcdserverpb.RequestOp.parse(
        upb("etcdserverpb.RequestOp")(request_put={"key": b"k"}).SerializeToString()
    )
    assert betterproto2.which_one_of(op, "request") == ("request_put", op.request_put)
    assert betterproto2.which_one_of(etcdserverpb.RequestOp(), "request") == ("", None)
    cmp = etcdserverpb.Compare.parse(b"\x20\x00")  # version = 0, present
    assert betterproto2.which_one_of(cmp, "target_union") == ("version", 0)
    req = etcdserverpb.WatchRequest.parse(b"\x1a\x00")
    assert betterproto2.which_one_of(req, "request_union")[0] == "progress_request"


SERVICES = DECLARED_METHODS
STREAMING = {
    "/etcdserverpb.Watch/Watch": (True, True),
    "/etcdserverpb.Lease/LeaseKeepAlive": (True, True),
    "/etcdserverpb.Maintenance/Snapshot": (False, True),
    "/grpc.health.v1.Health/Watch": (False, True),
}


def test_services_and_methods(pool: descriptor_pool.DescriptorPool) -> None:
    for service, methods in SERVICES.items():
        desc = pool.FindServiceByName(service)
        assert [m.name for m in desc.methods] == methods
        for m in desc.methods:
            path = f"/{service}/{m.name}"
            assert (m.client_streaming, m.server_streaming) == STREAMING.get(path, (False, False))


def test_generated_server_bases_cover_every_method() -> None:
    from etcdgw._proto.grpc.health import v1 as health

    bases = [
        etcdserverpb.KvBase,
        etcdserverpb.WatchBase,
        etcdserverpb.LeaseBase,
        etcdserverpb.ClusterBase,
        etcdserverpb.MaintenanceBase,
        etcdserverpb.AuthBase,
        health.HealthBase,
    ]
    paths = {path for base in bases for path in base().__mapping__()}
    expected = {f"/{s}/{m}" for s, ms in SERVICES.items() for m in ms}
    assert paths == expected


# ---------------------------------------------------------------- codec


def test_codec_preencoded_passes_through() -> None:
    codec = EtcdCodec()
    data = b"\x0a\x00\x20\x05"
    assert codec.encode(Preencoded(data), etcdserverpb.RangeResponse) is data


def test_codec_round_trip() -> None:
    codec = EtcdCodec()
    msg = etcdserverpb.TxnRequest(
        success=[etcdserverpb.RequestOp(request_put=etcdserverpb.PutRequest(key=b"k", lease=-5))]
    )
    data = codec.encode(msg, etcdserverpb.TxnRequest)
    assert data == bytes(msg)
    assert codec.decode(data, etcdserverpb.TxnRequest) == msg


def test_codec_skips_unknown_fields() -> None:
    # field 99 (len) and field 100 (varint) are unknown to RangeRequest
    data = b"\x0a\x01a" + b"\x9a\x06\x02zz" + b"\xa0\x06\x01"
    assert EtcdCodec().decode(data, etcdserverpb.RangeRequest).key == b"a"


@pytest.mark.parametrize(
    ("data", "message_type"),
    [
        (b"\xff\xff\xff", etcdserverpb.RangeRequest),  # truncated tag varint
        (b"\x0a\x05ab", etcdserverpb.RangeRequest),  # length past the end
        (b"\x18", etcdserverpb.PutRequest),  # missing varint value
        (b"\x18" + b"\xff" * 10 + b"\x01", etcdserverpb.PutRequest),  # varint > 10 bytes
        (b"\x0b\x0c", etcdserverpb.RangeRequest),  # group wire types
        (b"\x0f", etcdserverpb.RangeRequest),  # wire type 7
        (b"\x00\x01", etcdserverpb.RangeRequest),  # field number 0
        (b"\x08\x01", etcdserverpb.RangeRequest),  # key (bytes) sent as varint
        (b"\x0d\x00\x00\x00", etcdserverpb.RangeRequest),  # truncated fixed32
        (b"\x0a\x02\xff\xfe", etcdserverpb.AuthenticateRequest),  # invalid UTF-8 string
        # TxnRequest.success[0] is a RequestOp whose request_put has a bad length
        (b"\x12\x04\x12\x02\x0a\x05", etcdserverpb.TxnRequest),
        (b"\x0a\x02\x08\x07", etcdserverpb.WatchRequest),  # create_request.key as varint
    ],
)
def test_codec_rejects_malformed(data: bytes, message_type: type[betterproto2.Message]) -> None:
    with pytest.raises(CodecDecodeError):
        EtcdCodec().decode(data, message_type)


def _len_field(number: int, payload: bytes) -> bytes:
    out = bytearray([number << 3 | 2])
    n = len(payload)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


def test_codec_rejects_absurd_nesting() -> None:
    # TxnRequest{success=[RequestOp{request_txn=TxnRequest{...}}]}: 240 message levels,
    # built by hand (betterproto2 itself cannot encode that deep).
    data = b""
    for _ in range(120):
        data = _len_field(2, _len_field(4, data))
    with pytest.raises(CodecDecodeError, match="nested too deeply"):
        EtcdCodec().decode(data, etcdserverpb.TxnRequest)
    # 20 levels is fine
    shallow = b""
    for _ in range(10):
        shallow = _len_field(2, _len_field(4, shallow))
    assert EtcdCodec().decode(shallow, etcdserverpb.TxnRequest).success
