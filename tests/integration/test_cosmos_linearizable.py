"""Answers decided on a replica are linearizable across gateways (issue 9, "What is wrong").

Three ``etcdgw serve --backend cosmos`` processes on one container of the Cosmos test server. A
write is acknowledged by one gateway; right after, another gateway answers a request whose
answer depends on it *without committing anything*: a compare that must now fail or succeed, a
delete that must now find the key, a lease that must now exist or be gone. Before the fix those
were answered from a replica trailing the log by the tail's poll interval: 30 of 30 Txn probes
answered ``succeeded=false`` with header revision N-1, and 30 of 30 deletes found nothing (and
the key stayed: a lost delete). Each probe runs 100 rounds over every ordered gateway pair.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from grpclib.client import Channel
from support.cluster import Cluster, cluster_of
from support.driver import Failure, GrpcDriver
from support.lease import LeaseClient

from etcdgw import errors
from etcdgw._proto import etcdserverpb as pb

pytestmark = pytest.mark.timeout(180)

ROUNDS = 100
PAIRS = list(itertools.permutations(range(3), 2))


@pytest.fixture(scope="module")
def trio(cosmos_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, cosmos_endpoint, tmp_path_factory.mktemp("lin")) as cluster:
        yield cluster


@pytest.fixture
async def kvs(trio: Cluster) -> AsyncIterator[list[GrpcDriver]]:
    drivers = [GrpcDriver.connect(s) for s in trio.servers]
    yield drivers
    for d in drivers:
        await d.close()


@pytest.fixture
async def lcs(trio: Cluster) -> AsyncIterator[list[LeaseClient]]:
    channels = [Channel(s.host, s.port) for s in trio.servers]
    yield [LeaseClient(c) for c in channels]
    for c in channels:
        c.close()


def ok(outcome: Any) -> Any:
    assert not isinstance(outcome, Failure), outcome
    return outcome


def value_is(key: bytes, value: bytes) -> pb.Compare:
    return pb.Compare(key=key, target=pb.CompareCompareTarget.VALUE,
                      result=pb.CompareCompareResult.EQUAL, value=value)


def put_op(key: bytes, value: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


async def test_compare_after_an_ack_through_another_gateway(kvs: list[GrpcDriver],
                                                            prefix: str) -> None:
    """Put k=v through a (revision N), then through b Txn{VALUE(k) == v; Put k v2}: it must
    succeed, at revision N+1, every time."""
    key = prefix.encode() + b"cas"
    stale = []
    for i in range(ROUNDS):
        a, b = PAIRS[i % len(PAIRS)]
        value = b"v%d" % i
        rev = int(ok(await kvs[a].put(pb.PutRequest(key=key, value=value))).header.revision)
        t = ok(await kvs[b].txn(pb.TxnRequest(compare=[value_is(key, value)],
                                              success=[put_op(key, value + b"'")])))
        if not t.succeeded or t.header.revision != rev + 1:
            stale.append((i, a, b, rev, t.succeeded, t.header.revision))
    assert stale == [], f"{len(stale)} of {ROUNDS} compares answered on a stale replica"


async def test_failed_compare_header_covers_the_ack(kvs: list[GrpcDriver], prefix: str) -> None:
    """A compare that fails (no write) still answers with a header revision >= every write
    acknowledged before it was sent, through any gateway."""
    key = prefix.encode() + b"failed"
    for i in range(ROUNDS):
        a, b = PAIRS[i % len(PAIRS)]
        rev = int(ok(await kvs[a].put(pb.PutRequest(key=key, value=b"%d" % i))).header.revision)
        t = ok(await kvs[b].txn(pb.TxnRequest(compare=[value_is(key, b"never")],
                                              success=[put_op(key, b"x")])))
        assert not t.succeeded
        assert t.header.revision >= rev, (i, a, b)


async def test_delete_after_an_ack_through_another_gateway(kvs: list[GrpcDriver],
                                                           prefix: str) -> None:
    """Put a new key through a, then DeleteRange(k) through b: deleted == 1, and the key is
    gone on every gateway afterwards (the delete was lost before, not only late)."""
    p = prefix.encode()
    missed = []
    for i in range(ROUNDS):
        a, b = PAIRS[i % len(PAIRS)]
        key = p + b"del%03d" % i
        rev = int(ok(await kvs[a].put(pb.PutRequest(key=key, value=b"v"))).header.revision)
        d = ok(await kvs[b].delete_range(pb.DeleteRangeRequest(key=key)))
        if d.deleted != 1 or d.header.revision != rev + 1:
            missed.append((i, a, b, rev, d.deleted, d.header.revision))
    assert missed == [], f"{len(missed)} of {ROUNDS} deletes answered on a stale replica"
    for kv in kvs:
        r = ok(await kv.range(pb.RangeRequest(key=p + b"del", range_end=p + b"dem")))
        assert r.count == 0


async def test_compact_at_a_revision_acknowledged_elsewhere(kvs: list[GrpcDriver],
                                                            prefix: str) -> None:
    """Compact(N) through b right after gateway a acknowledged revision N: not 'required
    revision is a future revision'."""
    key = prefix.encode() + b"compact"
    for i in range(12):
        a, b = PAIRS[i % len(PAIRS)]
        rev = int(ok(await kvs[a].put(pb.PutRequest(key=key, value=b"%d" % i))).header.revision)
        ok(await kvs[b].compact(pb.CompactionRequest(revision=rev)))


async def test_leases_across_gateways(kvs: list[GrpcDriver], lcs: list[LeaseClient],
                                      prefix: str) -> None:
    """A lease granted through a is usable through b at once (Put with it, TimeToLive,
    KeepAlive, LeaseLeases); once revoked through a, b says it is gone at once; an id granted
    through b cannot be granted again through a. Lease grants and revokes without keys create
    no revision: only the log's lease sequence tells b that its lease table trails."""
    p = prefix.encode()
    for i in range(30):
        a, b = PAIRS[i % len(PAIRS)]
        lease_id = 0x7E57_0000 + i
        ok(await lcs[a].grant(60, lease_id))
        key = p + b"lease%d" % i
        ok(await kvs[b].put(pb.PutRequest(key=key, value=b"v", lease=lease_id)))
        ttl = ok(await lcs[b].time_to_live(lease_id))
        assert ttl.ttl > 0 and ttl.granted_ttl == 60
        assert lease_id in [x.id for x in ok(await lcs[b].leases()).leases]
        ok(await lcs[a].revoke(lease_id))
        # b: gone, for every way of asking
        failed = await kvs[b].put(pb.PutRequest(key=key + b"x", value=b"v", lease=lease_id))
        assert failed == Failure(int(errors.LEASE_NOT_FOUND.code), errors.LEASE_NOT_FOUND.message)
        assert ok(await lcs[b].time_to_live(lease_id)).ttl == -1
        assert lease_id not in [x.id for x in ok(await lcs[b].leases()).leases]
        async with lcs[b].keepalive_stream() as stream:
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease_id), end=True)
            reply = await stream.recv_message()
            assert reply is not None and reply.ttl == 0
        assert ok(await kvs[b].range(pb.RangeRequest(key=key))).count == 0
        # an id taken through one gateway is taken for all
        again = 0x7E58_0000 + i
        ok(await lcs[b].grant(60, again))
        dup = await lcs[a].grant(60, again)
        assert dup == Failure(int(errors.LEASE_EXISTS.code), errors.LEASE_EXISTS.message)
        ok(await lcs[a].revoke(again))
        missing = await lcs[b].revoke(again)
        assert missing == Failure(int(errors.LEASE_NOT_FOUND.code), errors.LEASE_NOT_FOUND.message)
