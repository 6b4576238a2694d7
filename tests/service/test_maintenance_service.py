"""Maintenance, alarms, quota, HTTP sniffing and auto compaction, in process.

Contract MT01-MT10, L17, CL03, HT01-HT04; the etcdctl-level view is tests/integration/
test_maintenance.py. These tests reach what a user cannot easily: exact Alarm responses, the
CORRUPT alarm, the snapshot stream's framing, HashKV across fresh gateways and restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from gateway_support import expect_error, gateway_config
from grpclib.client import Channel
from grpclib.const import Status

from etcdgw import Config, ConfigError, Gateway
from etcdgw._proto import etcdserverpb as pb
from etcdgw.compactor import AutoCompactor

NOSPACE, CORRUPT = pb.AlarmType.NOSPACE, pb.AlarmType.CORRUPT
GET, ACTIVATE, DEACTIVATE = (
    pb.AlarmRequestAlarmAction.GET,
    pb.AlarmRequestAlarmAction.ACTIVATE,
    pb.AlarmRequestAlarmAction.DEACTIVATE,
)


async def alarm(channel: Channel, action: pb.AlarmRequestAlarmAction, member: int = 0,
                kind: pb.AlarmType = pb.AlarmType.NONE) -> list[tuple[int, pb.AlarmType]]:
    reply = await pb.MaintenanceStub(channel).alarm(
        pb.AlarmRequest(action=action, member_id=member, alarm=kind)
    )
    return [(a.member_id, a.alarm) for a in reply.alarms]


async def test_alarm_activate_get_deactivate(gateway: Gateway, channel: Channel) -> None:
    me = gateway.store.member_id
    assert await alarm(channel, GET) == []
    assert await alarm(channel, ACTIVATE, me, NOSPACE) == [(me, NOSPACE)]
    assert await alarm(channel, ACTIVATE, me, NOSPACE) == [(me, NOSPACE)]  # idempotent
    assert await alarm(channel, ACTIVATE, me, pb.AlarmType.NONE) == []
    assert await alarm(channel, GET) == [(me, NOSPACE)]
    assert await alarm(channel, GET, 0, CORRUPT) == []
    status = await pb.MaintenanceStub(channel).status(pb.StatusRequest())
    assert status.errors == [f"memberID:{me} alarm:NOSPACE "]
    assert await alarm(channel, DEACTIVATE, me, CORRUPT) == []
    assert await alarm(channel, DEACTIVATE, me, NOSPACE) == [(me, NOSPACE)]
    assert await alarm(channel, GET) == []


async def test_nospace_gates_growing_writes_only(gateway: Gateway, channel: Channel) -> None:
    kv = pb.KvStub(channel)
    await kv.put(pb.PutRequest(key=b"a", value=b"1"))
    await alarm(channel, ACTIVATE, gateway.store.member_id, NOSPACE)
    for call in (
        kv.put(pb.PutRequest(key=b"b", value=b"1")),
        kv.txn(pb.TxnRequest(failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"b"))])),
        pb.LeaseStub(channel).lease_grant(pb.LeaseGrantRequest(ttl=10)),
    ):
        error = await expect_error(call)
        assert (error.status, error.message) == (
            Status.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"
        )
    # No put in either branch: allowed (etcd's costTxn is 0).
    reply = await kv.txn(pb.TxnRequest(
        success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))],
        failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a"))],
    ))  # fmt: skip
    assert reply.succeeded
    deleted = await kv.delete_range(pb.DeleteRangeRequest(key=b"a"))
    assert deleted.deleted == 1
    await kv.compact(pb.CompactionRequest(revision=deleted.header.revision))
    await alarm(channel, DEACTIVATE, gateway.store.member_id, NOSPACE)
    await kv.put(pb.PutRequest(key=b"b", value=b"1"))


async def test_corrupt_alarm_stops_kv(gateway: Gateway, channel: Channel) -> None:
    await alarm(channel, ACTIVATE, gateway.store.member_id, CORRUPT)
    error = await expect_error(pb.KvStub(channel).range(pb.RangeRequest(key=b"a")))
    assert (error.status, error.message) == (Status.DATA_LOSS, "etcdserver: corrupt cluster")
    await alarm(channel, DEACTIVATE, gateway.store.member_id, CORRUPT)
    await pb.KvStub(channel).range(pb.RangeRequest(key=b"a"))


async def test_quota_raises_nospace(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, quota_backend_bytes=200 * 1024)
    async with Gateway(config) as gw:
        ch = Channel(*gw.address)
        try:
            kv = pb.KvStub(ch)
            with pytest.raises(Exception) as raised:
                for i in range(100):
                    await kv.put(pb.PutRequest(key=b"k%d" % i, value=b"x" * 8192))
            assert getattr(raised.value, "status", None) is Status.RESOURCE_EXHAUSTED
            assert gw.alarms.list() == [(gw.store.member_id, int(NOSPACE))]
            status = await pb.MaintenanceStub(ch).status(pb.StatusRequest())
            assert status.db_size_quota == 200 * 1024
        finally:
            ch.close()


async def test_status_raft_index_counts_compactions_and_alarms(
    gateway: Gateway, channel: Channel
) -> None:
    maintenance = pb.MaintenanceStub(channel)
    before = await maintenance.status(pb.StatusRequest())
    put = await pb.KvStub(channel).put(pb.PutRequest(key=b"k", value=b"v"))
    await pb.KvStub(channel).compact(pb.CompactionRequest(revision=put.header.revision))
    await alarm(channel, ACTIVATE, 7, CORRUPT)
    await alarm(channel, DEACTIVATE, 7, CORRUPT)
    after = await maintenance.status(pb.StatusRequest())
    assert after.header.revision == before.header.revision + 1
    assert after.raft_index == after.raft_applied_index == before.raft_index + 4


async def test_hash_kv(gateway: Gateway, channel: Channel) -> None:
    kv, maintenance = pb.KvStub(channel), pb.MaintenanceStub(channel)
    r1 = (await kv.put(pb.PutRequest(key=b"a", value=b"1"))).header.revision
    h1 = await maintenance.hash_kv(pb.HashKvRequest(revision=r1))
    assert (h1.hash_revision, h1.compact_revision) == (r1, -1)
    r2 = (await kv.put(pb.PutRequest(key=b"a", value=b"2"))).header.revision
    assert (await maintenance.hash_kv(pb.HashKvRequest(revision=r1))).hash == h1.hash
    latest = await maintenance.hash_kv(pb.HashKvRequest())
    assert latest.hash_revision == r2 and latest.hash != h1.hash
    assert (await maintenance.hash(pb.HashRequest())).hash == latest.hash
    error = await expect_error(maintenance.hash_kv(pb.HashKvRequest(revision=r2 + 1)))
    assert error.message == "etcdserver: mvcc: required revision is a future revision"
    await kv.compact(pb.CompactionRequest(revision=r2))
    error = await expect_error(maintenance.hash_kv(pb.HashKvRequest(revision=r1)))
    assert (error.status, error.message) == (
        Status.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
    )
    assert (await maintenance.hash_kv(pb.HashKvRequest())).compact_revision == r2


async def _history(channel: Channel) -> None:
    kv = pb.KvStub(channel)
    for i in range(20):
        await kv.put(pb.PutRequest(key=b"k%d" % (i % 6), value=b"v%d" % i))
    await kv.delete_range(pb.DeleteRangeRequest(key=b"k2"))
    await kv.txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"t1", value=b"x")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"t0", value=b"y")),
    ]))  # fmt: skip
    await kv.compact(pb.CompactionRequest(revision=10))


async def test_hash_kv_equal_histories_equal_hashes(tmp_path: Path) -> None:
    hashes = []
    for name in ("one", "two", "one"):  # "one" twice: the same data dir after a restart
        async with Gateway(gateway_config(tmp_path / name)) as gw:
            ch = Channel(*gw.address)
            try:
                if name == "two" or not hashes:
                    await _history(ch)
                reply = await pb.MaintenanceStub(ch).hash_kv(pb.HashKvRequest(revision=15))
                hashes.append((reply.hash, reply.compact_revision))
            finally:
                ch.close()
    assert hashes[0] == hashes[1] == hashes[2]


async def test_snapshot_stream_framing(gateway: Gateway, channel: Channel) -> None:
    kv = pb.KvStub(channel)
    for i in range(50):
        await kv.put(pb.PutRequest(key=b"k%d" % i, value=b"x" * 4000))
    chunks = [c async for c in pb.MaintenanceStub(channel).snapshot(pb.SnapshotRequest())]
    *data_chunks, last = chunks
    data = b"".join(c.blob for c in data_chunks)
    assert len(data_chunks) > 1 and all(len(c.blob) <= 32 * 1024 for c in data_chunks)
    assert [c.remaining_bytes for c in data_chunks] == [
        len(data) - sum(len(c.blob) for c in data_chunks[: i + 1])
        for i in range(len(data_chunks))
    ]
    assert last.remaining_bytes == 0 and last.blob == hashlib.sha256(data).digest()
    assert (len(data) + 32) % 512 == 32
    assert data.startswith(b"SQLite format 3\0")
    assert all(c.version == "3.5.17" for c in chunks)


async def test_defragment_gives_space_back(gateway: Gateway, channel: Channel) -> None:
    kv = pb.KvStub(channel)
    for i in range(200):
        await kv.put(pb.PutRequest(key=b"k%d" % (i % 10), value=b"x" * 4000))
    deleted = await kv.delete_range(pb.DeleteRangeRequest(key=b"k", range_end=b"l"))
    await kv.compact(pb.CompactionRequest(revision=deleted.header.revision, physical=True))
    maintenance = pb.MaintenanceStub(channel)
    before = await maintenance.status(pb.StatusRequest())
    await maintenance.defragment(pb.DefragmentRequest())
    after = await maintenance.status(pb.StatusRequest())
    assert after.db_size < before.db_size / 4
    assert after.db_size_in_use <= after.db_size
    await kv.put(pb.PutRequest(key=b"after", value=b"ok"))


async def test_move_leader_and_downgrade(gateway: Gateway, channel: Channel) -> None:
    maintenance = pb.MaintenanceStub(channel)
    await maintenance.move_leader(pb.MoveLeaderRequest(target_id=gateway.store.member_id))
    error = await expect_error(maintenance.move_leader(pb.MoveLeaderRequest(target_id=1)))
    assert (error.status, error.message) == (
        Status.FAILED_PRECONDITION, "etcdserver: bad leader transferee"
    )
    for request, message in [
        (pb.DowngradeRequest(version="3.4"), "etcdserver: invalid downgrade target version"),
        (pb.DowngradeRequest(version="x"), "etcdserver: wrong downgrade target version format"),
        (
            pb.DowngradeRequest(action=pb.DowngradeRequestDowngradeAction.CANCEL),
            "etcdserver: no inflight downgrade job",
        ),
    ]:
        error = await expect_error(maintenance.downgrade(request))
        assert error.message == message


async def test_member_changes_refused(gateway: Gateway, channel: Channel) -> None:
    cluster = pb.ClusterStub(channel)
    error = await expect_error(cluster.member_add(pb.MemberAddRequest(peer_ur_ls=["nonsense"])))
    assert (error.status, error.message) == (
        Status.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"
    )
    error = await expect_error(cluster.member_promote(pb.MemberPromoteRequest(id=42)))
    assert (error.status, error.message) == (Status.NOT_FOUND, "etcdserver: member not found")


# -- HTTP on the gRPC port ------------------------------------------------------------------


async def raw_http(gateway: Gateway, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*gateway.address)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()  # until the server closes
    finally:
        writer.close()


async def test_http_keep_alive_and_close(gateway: Gateway) -> None:
    two = (
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_http(gateway, two)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b'{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}' in answer
    assert answer.endswith(b'{"health":"true","reason":""}')


async def test_http_malformed_request(gateway: Gateway) -> None:
    answer = await raw_http(gateway, b"NONSENSE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_http_health_with_alarm(gateway: Gateway, channel: Channel) -> None:
    await alarm(channel, ACTIVATE, gateway.store.member_id, CORRUPT)
    answer = await raw_http(gateway, b"GET /health HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b'{"health":"false","reason":"ALARM CORRUPT"}' in answer
    answer = await raw_http(gateway, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert b"[-]data_corruption failed: alarm activated: CORRUPT" in answer
    assert b"readyz check failed" in answer


async def test_grpc_still_works_beside_http(gateway: Gateway, channel: Channel) -> None:
    await raw_http(gateway, b"GET /metrics HTTP/1.0\r\n\r\n")
    reply = await pb.KvStub(channel).range(pb.RangeRequest(key=b"k"))
    assert reply.header.revision >= 1


# -- auto compaction and its flags ------------------------------------------------------------


async def test_revision_auto_compaction(gateway: Gateway, channel: Channel) -> None:
    kv = pb.KvStub(channel)
    for i in range(10):
        await kv.put(pb.PutRequest(key=b"k", value=b"%d" % i))
    compacted = asyncio.Event()
    gateway.store.compaction_listeners.append(lambda rev: compacted.set())
    compactor = AutoCompactor(gateway.store, "revision", 3, interval=0.05)
    compactor.start()
    try:
        async with asyncio.timeout(5):
            await compacted.wait()
    finally:
        await compactor.close()
    assert gateway.store.compact_revision == gateway.store.revision - 3


@pytest.mark.parametrize(
    ("mode", "retention", "expected"),
    [
        ("periodic", "0", None),
        ("periodic", "1h", ("periodic", 3600.0)),
        ("periodic", "2", ("periodic", 7200.0)),
        ("periodic", "30m", ("periodic", 1800.0)),
        ("revision", "1000", ("revision", 1000.0)),
    ],
)
def test_auto_compaction_flags(mode: str, retention: str, expected: object) -> None:
    config = Config.from_args(
        ["--auto-compaction-mode", mode, "--auto-compaction-retention", retention], environ={}
    )
    assert config.auto_compaction == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--auto-compaction-mode", "daily"],
        ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
        ["--listen-metrics-urls", "https://127.0.0.1:1"],
    ],
)
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        Config.from_args(argv, environ={})


def test_quota_flag() -> None:
    assert Config().quota_bytes == 2 * 1024**3
    assert Config(quota_backend_bytes=0).quota_bytes == 2 * 1024**3
    assert Config(quota_backend_bytes=-1).quota_bytes == 0
    assert Config.from_args(["--quota-backend-bytes", "1048576"], environ={}).quota_bytes == 2**20
