"""Which methods are served, and the ones the gateway answers itself: MemberList, Status, Health.

Contract T01-T10 (surface), CL01-CL02 and H10 (MemberList), MT01-MT04 (Status).
"""

from __future__ import annotations

import pytest
from gateway_support import FakeStore, expect_error, raw_call
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from support.catalogue import DECLARED_METHODS

from etcdgw import Gateway
from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto.grpc.health import v1 as health
from etcdgw.server.boundary import catalogue

DECLARED = DECLARED_METHODS
ALL_PATHS = {f"/{service}/{method}" for service, methods in DECLARED.items() for method in methods}

IMPLEMENTED = {
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/grpc.health.v1.Health/Check",
}
# Shrinks as later issues build the Watch, Lease, Auth, ... services: update it with them.
UNIMPLEMENTED = sorted(ALL_PATHS - IMPLEMENTED)


def test_every_declared_method_is_in_the_catalogue() -> None:
    assert set(catalogue()) == ALL_PATHS


@pytest.mark.parametrize("path", UNIMPLEMENTED)
async def test_not_yet_implemented_methods_answer_unimplemented(
    raw_channel: Channel, path: str
) -> None:
    _, service, method = path.split("/")
    error = await expect_error(
        raw_call(raw_channel, path, b"", cardinality=catalogue()[path].cardinality)
    )
    assert error.status is Status.UNIMPLEMENTED
    assert error.message == f"unknown method {method} for service {service}"


# Streams are exercised by their own suites (tests/integration/test_watch.py, ...).
@pytest.mark.parametrize(
    "path", sorted(p for p in IMPLEMENTED if catalogue()[p].cardinality is Cardinality.UNARY_UNARY)
)
async def test_implemented_methods_are_served(raw_channel: Channel, path: str) -> None:
    # An empty message: valid for some methods, an etcd error for others (no key); never
    # UNIMPLEMENTED, and never grpclib's "Method not found".
    try:
        await raw_call(raw_channel, path, b"")
    except Exception as exc:
        status = getattr(exc, "status", None)
        assert status not in (Status.UNIMPLEMENTED, None), exc


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # k8s 1.37 probes RangeStream and falls back to Range on UNIMPLEMENTED (T08).
        ("/etcdserverpb.KV/RangeStream", "unknown method RangeStream for service etcdserverpb.KV"),
        ("/v3lockpb.Lock/Lock", "unknown service v3lockpb.Lock"),
        ("/nonsense", 'malformed method name: "/nonsense"'),
    ],
)
async def test_undeclared_method_is_unimplemented(
    raw_channel: Channel, path: str, message: str
) -> None:
    # A proper gRPC response (with content-type): grpc-go clients map anything else to UNKNOWN.
    error = await expect_error(raw_call(raw_channel, path, b""))
    assert error.status is Status.UNIMPLEMENTED
    assert error.message == message


async def test_unimplemented_call_leaves_the_connection_usable(channel: Channel) -> None:
    error = await expect_error(pb.AuthStub(channel).auth_status(pb.AuthStatusRequest()))
    assert error.status is Status.UNIMPLEMENTED
    reply = await pb.KvStub(channel).range(pb.RangeRequest(key=b"k"))
    assert reply.header.revision >= 1


# -- MemberList -------------------------------------------------------------------------------


async def test_member_list(gateway: Gateway, channel: Channel) -> None:
    reply = await pb.ClusterStub(channel).member_list(pb.MemberListRequest(linearizable=True))
    header = reply.header
    assert header.cluster_id == gateway.store.cluster_id != 0
    assert header.member_id == gateway.store.member_id != 0
    assert header.raft_term == 1
    assert header.revision == 0  # H10
    assert len(reply.members) == 1
    member = reply.members[0]
    assert member.id == header.member_id  # CL02
    assert member.name == "service-test"
    assert member.peer_ur_ls == ["http://localhost:2380"]
    # Port 0 in the config: clients are told the port actually bound.
    assert member.client_ur_ls == [gateway.url]
    assert not member.client_ur_ls[0].endswith(":0")
    assert member.is_learner is False


async def test_member_list_with_fake_store(fake_channel: Channel) -> None:
    reply = await pb.ClusterStub(fake_channel).member_list(pb.MemberListRequest())
    assert reply.header.cluster_id == FakeStore.cluster_id
    assert reply.members[0].id == FakeStore.member_id


# -- Status -----------------------------------------------------------------------------------


async def test_status(gateway: Gateway, channel: Channel) -> None:
    maintenance = pb.MaintenanceStub(channel)
    status = await maintenance.status(pb.StatusRequest())
    header = status.header
    assert header.cluster_id == gateway.store.cluster_id
    assert header.member_id == gateway.store.member_id
    assert header.raft_term == 1
    assert header.revision == gateway.store.revision >= 1
    assert status.version == "3.5.17"
    assert status.db_size > 0  # MT03: etcdctl divides by it
    assert 0 <= status.db_size_in_use <= status.db_size
    assert status.db_size_quota == 2 * 1024**3
    assert status.leader == header.member_id  # MT04: etcdctl's "IS LEADER"
    assert status.raft_term == header.raft_term
    assert status.raft_index == status.raft_applied_index == header.revision
    assert status.is_learner is False
    assert status.errors == []

    put = await pb.KvStub(channel).put(pb.PutRequest(key=b"status-key", value=b"v"))
    after = await maintenance.status(pb.StatusRequest())
    assert after.header.revision == put.header.revision
    assert after.raft_index == after.raft_applied_index == put.header.revision
    assert after.raft_index > status.raft_index


async def test_status_with_fake_store(fake_channel: Channel) -> None:
    status = await pb.MaintenanceStub(fake_channel).status(pb.StatusRequest())
    assert status.header.revision == FakeStore.revision
    assert (status.db_size, status.db_size_in_use) == (8192, 4096)  # from the backend


# -- Health -----------------------------------------------------------------------------------


async def test_health_check_serving(channel: Channel) -> None:
    reply = await health.HealthStub(channel).check(health.HealthCheckRequest())
    assert reply.status is health.HealthCheckResponseServingStatus.SERVING


async def test_health_check_unknown_service(channel: Channel) -> None:
    error = await expect_error(
        health.HealthStub(channel).check(health.HealthCheckRequest(service="etcdserverpb.KV"))
    )
    assert error.status is Status.NOT_FOUND
    assert error.message == "unknown service"
