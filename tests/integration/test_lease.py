"""Leases (contract §11, H09, M03-M06, D03, P03, W26, K8S17) over gRPC and etcdctl, on etcd and
etcdgw, plus a differential run of lease-driven deletes and an etcdgw restart with live leases.

Servers are shared by the module. A test that attaches keys to a lease either revokes it or
waits for its expiry before it ends, so no later test sees a revision it did not make; leases
without keys may outlive their test (they create no revision when they expire, M04).
Expiry is awaited through watch events or polled reads with a deadline, never by sleeping a
fixed time and hoping.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.cosmos import target_with_cosmos
from support.driver import Failure, GrpcDriver
from support.etcdctl import Etcdctl
from support.lease import LeaseClient
from support.procs import Server
from support.watch import WatchClient, kv_fields, prefix_end

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

pytestmark = pytest.mark.etcd

target = target_with_cosmos  # also on "etcdgw-cosmos": etcdgw on the Cosmos backend

DELETE = mvccpb.EventEventType.DELETE
NOT_FOUND = Failure(5, "etcdserver: requested lease not found")
EXISTS = Failure(9, "etcdserver: lease already exists")
TOO_LARGE = Failure(11, "etcdserver: too large lease TTL")
MAX_TTL = 9_000_000_000
#: How long a test waits for a 2 s lease to expire: etcd checks every 500 ms; generous for a
#: loaded machine, but a lease that never expires still fails the test.
EXPIRY_WAIT = 15.0


@pytest.fixture
async def kv(target: Server) -> AsyncIterator[GrpcDriver]:
    driver = GrpcDriver.connect(target)
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
async def leases(kv: GrpcDriver) -> LeaseClient:
    return LeaseClient(kv.channel)


async def current(kv: GrpcDriver) -> int:
    r = await kv.range(pb.RangeRequest(key=b"\x00/absent-for-revision"))
    return int(r.header.revision)


async def put(kv: GrpcDriver, key: bytes, lease: int = 0, value: bytes = b"v") -> int:
    r = await kv.put(pb.PutRequest(key=key, value=value, lease=lease))
    assert isinstance(r, pb.PutResponse), r
    return int(r.header.revision)


async def grant(leases: LeaseClient, ttl: int, lease_id: int = 0) -> pb.LeaseGrantResponse:
    r = await leases.grant(ttl, lease_id)
    assert isinstance(r, pb.LeaseGrantResponse), r
    return r


async def keys_under(kv: GrpcDriver, prefix: bytes) -> list[bytes]:
    r = await kv.range(pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True))
    return [x.key for x in r.kvs]


# -- grant ------------------------------------------------------------------------------------


async def test_grant_ttl_rules(kv: GrpcDriver, leases: LeaseClient) -> None:
    before = await current(kv)
    for asked, effective in [(1, 2), (0, 2), (-3, 2), (2, 2), (7, 7)]:  # L06
        r = await grant(leases, asked)
        assert r.ttl == effective and r.id > 0  # L04: a positive id
        assert r.header.revision == before  # H09, M04: no revision
        ttl = await leases.time_to_live(r.id)
        assert ttl.granted_ttl == effective
    big = await grant(leases, MAX_TTL)
    assert big.ttl == MAX_TTL
    assert await leases.grant(MAX_TTL + 1) == TOO_LARGE  # L05
    revoked = await leases.revoke(big.id)
    assert isinstance(revoked, pb.LeaseRevokeResponse) and revoked.header.revision == before
    assert await current(kv) == before


async def test_grant_with_client_chosen_id(kv: GrpcDriver, leases: LeaseClient) -> None:
    lease_id = 0x5EED0000 + time.monotonic_ns() % 0xFFFF
    r = await grant(leases, 30, lease_id)
    assert r.id == lease_id and r.ttl == 30
    assert await leases.grant(60, lease_id) == EXISTS  # L04
    assert (await leases.time_to_live(lease_id)).granted_ttl == 30  # unchanged
    await leases.revoke(lease_id)
    again = await grant(leases, 5, lease_id)  # a revoked id may be granted again
    assert again.id == lease_id
    await leases.revoke(lease_id)


async def test_put_with_unknown_lease(kv: GrpcDriver, leases: LeaseClient, prefix: str) -> None:
    before = await current(kv)
    key = f"{prefix}k".encode()
    assert await kv.put(pb.PutRequest(key=key, value=b"v", lease=0x7AB)) == NOT_FOUND  # P03
    txn = pb.TxnRequest(success=[pb.RequestOp(
        request_put=pb.PutRequest(key=key, value=b"v", lease=0x7AB))])
    assert await kv.txn(txn) == NOT_FOUND  # X17
    assert await current(kv) == before
    revoked = await grant(leases, 10)
    await leases.revoke(revoked.id)
    assert await kv.put(pb.PutRequest(key=key, value=b"v", lease=revoked.id)) == NOT_FOUND


# -- time to live, leases, keepalive --------------------------------------------------------


async def test_time_to_live_tracks_attached_keys(
    kv: GrpcDriver, leases: LeaseClient, prefix: str
) -> None:
    p = prefix.encode()
    lease = await grant(leases, 30)
    other = await grant(leases, 30)
    for name in (b"c", b"a", b"d", b"b", b"e"):
        await put(kv, p + name, lease.id)
    await put(kv, p + b"b")  # L14: a put without lease detaches
    await kv.delete_range(pb.DeleteRangeRequest(key=p + b"d"))  # D03: a delete detaches
    await put(kv, p + b"e", other.id)  # moved to the other lease
    await kv.put(pb.PutRequest(key=p + b"a", value=b"w", ignore_lease=True))  # M10: kept

    r = await leases.time_to_live(lease.id, keys=True)
    assert (r.id, r.granted_ttl) == (lease.id, 30)
    assert 25 <= r.ttl <= 30  # L12: whole seconds left
    assert sorted(r.keys) == [p + b"a", p + b"c"]
    assert (await leases.time_to_live(lease.id)).keys == []  # keys only on request
    assert (await leases.time_to_live(other.id, keys=True)).keys == [p + b"e"]
    assert r.header.revision == await current(kv)  # H09

    for lid in (lease.id, other.id):
        await leases.revoke(lid)
    assert await keys_under(kv, p) == [p + b"b"]


async def test_time_to_live_of_unknown_lease(kv: GrpcDriver, leases: LeaseClient) -> None:
    r = await leases.time_to_live(0x1DEAD, keys=True)
    assert (r.id, r.ttl, r.granted_ttl, r.keys) == (0x1DEAD, -1, 0, [])  # L12
    assert r.header.revision == await current(kv)


async def test_leases_lists_live_leases(kv: GrpcDriver, leases: LeaseClient) -> None:
    a = await grant(leases, 40)
    b = await grant(leases, 50)
    listed = await leases.leases()
    ids = [x.id for x in listed.leases]
    assert a.id in ids and b.id in ids  # L13
    assert listed.header.revision == await current(kv)
    await leases.revoke(a.id)
    ids = [x.id for x in (await leases.leases()).leases]
    assert a.id not in ids and b.id in ids
    await leases.revoke(b.id)


async def test_keepalive_stream_serves_many_requests(kv: GrpcDriver, leases: LeaseClient) -> None:
    lease = await grant(leases, 20)
    rev = await current(kv)
    async with leases.keepalive_stream() as stream:
        for lease_id, want in [(lease.id, 20), (lease.id, 20), (0x2DEAD, 0), (lease.id, 20)]:
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease_id))
            reply = await stream.recv_message()
            assert reply is not None
            assert (reply.id, reply.ttl) == (lease_id, want)  # L09: full TTL; unknown -> 0
            assert reply.header is not None and reply.header.revision == rev
        await stream.end()
        assert await stream.recv_message() is None  # L10: half-close ends the stream cleanly
        await stream.recv_trailing_metadata()
    await leases.revoke(lease.id)
    assert await leases.keepalive(lease.id) == 0  # revoked


async def test_keepalive_one_request_then_half_close(leases: LeaseClient) -> None:
    lease = await grant(leases, 9)
    assert await leases.keepalive(lease.id) == 9  # python-etcd3's refresh (L10)
    r = await leases.time_to_live(lease.id)
    assert 7 <= r.ttl <= 9
    await leases.revoke(lease.id)


async def test_keepalive_postpones_expiry(kv: GrpcDriver, leases: LeaseClient, prefix: str) -> None:
    key = f"{prefix}kept".encode()
    lease = await grant(leases, 2)
    await put(kv, key, lease.id)
    async with leases.keepalive_stream() as stream:
        end = time.monotonic() + 3.5  # beyond the 2 s TTL
        while time.monotonic() < end:
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease.id))
            reply = await stream.recv_message()
            assert reply is not None and reply.ttl == 2
            assert await keys_under(kv, key) == [key]
            await asyncio.sleep(0.5)  # the client's keepalive period (etcd clients: TTL/3)
        await stream.end()
        assert await stream.recv_message() is None
    before = await current(kv)
    r = await leases.revoke(lease.id)
    assert isinstance(r, pb.LeaseRevokeResponse) and r.header.revision == before + 1
    assert await keys_under(kv, key) == []


# -- revoke and expiry ------------------------------------------------------------------------


async def test_revoke_deletes_attached_keys_in_one_revision(
    kv: GrpcDriver, leases: LeaseClient, target: Server, prefix: str
) -> None:
    p = prefix.encode()
    lease = await grant(leases, 60)
    for name in (b"c", b"a", b"b"):
        await put(kv, p + name, lease.id, value=b"val-" + name)
    last = await put(kv, p + b"z")  # no lease
    async with WatchClient.connect(target) as w:
        await w.watch(p, prefix_end(p), prev_kv=True, start_revision=last + 1)
        r = await leases.revoke(lease.id)
        assert isinstance(r, pb.LeaseRevokeResponse), r
        assert r.header.revision == last + 1  # H09: the revision of its deletions
        events = await w.events(3)
    assert [e.type for e in events] == [DELETE] * 3  # W26
    assert [e.kv.key for e in events] == [p + b"a", p + b"b", p + b"c"]  # M06: ascending
    assert {e.kv.mod_revision for e in events} == {last + 1}  # one revision (L07)
    assert [e.prev_kv.value for e in events] == [b"val-a", b"val-b", b"val-c"]
    assert await keys_under(kv, p) == [p + b"z"]
    assert await leases.revoke(lease.id) == NOT_FOUND  # L08
    assert (await leases.time_to_live(lease.id)).ttl == -1

    empty = await grant(leases, 60)
    r = await leases.revoke(empty.id)
    assert r.header.revision == last + 1  # M04: no keys, no revision
    assert await current(kv) == last + 1


async def test_expiry_deletes_keys_with_delete_events(
    kv: GrpcDriver, leases: LeaseClient, target: Server, prefix: str
) -> None:
    p = prefix.encode()
    started = time.monotonic()
    lease = await grant(leases, 2)
    assert lease.ttl == 2
    for name in (b"y", b"x", b"w"):
        await put(kv, p + name, lease.id)
    last = await put(kv, p + b"keep")
    async with WatchClient.connect(target) as w:
        await w.watch(p, prefix_end(p), prev_kv=True, start_revision=last + 1)
        events = await w.events(3, timeout=EXPIRY_WAIT)
        expired_at = time.monotonic()
    assert expired_at - started >= 2.0  # L16: never before the TTL
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (DELETE, p + b"w", last + 1), (DELETE, p + b"x", last + 1), (DELETE, p + b"y", last + 1)
    ]
    assert all(e.prev_kv is not None and e.prev_kv.lease == lease.id for e in events)  # W17
    assert await keys_under(kv, p) == [p + b"keep"]
    assert (await leases.time_to_live(lease.id)).ttl == -1
    assert await leases.keepalive(lease.id) == 0
    assert lease.id not in [x.id for x in (await leases.leases()).leases]
    assert await leases.revoke(lease.id) == NOT_FOUND
    assert await current(kv) == last + 1


# -- differential: lease-driven deletes on etcd and etcdgw -----------------------------------


async def _lease_scenario(server: Server, prefix: bytes) -> list[Any]:
    """Grants, attachments, detachments, a revoke and an expiry; everything observable, with
    revisions relative to the start and lease ids replaced by their names."""
    kv = GrpcDriver.connect(server)
    lc = LeaseClient(kv.channel)
    out: list[Any] = []
    try:
        base = await current(kv)
        async with WatchClient.connect(server) as w:
            await w.watch(prefix, prefix_end(prefix), prev_kv=True)
            short = await grant(lc, 2)
            long = await grant(lc, 60)
            names = {short.id: "short", long.id: "long", 0: ""}

            def rel(x: int) -> int:
                return x - base if x else 0

            def kvt(k: mvccpb.KeyValue | None) -> Any:
                f = kv_fields(k)
                if f is None or k is None:
                    return None
                return (f[0], rel(f[1]), rel(f[2]), f[3], f[4], names.get(k.lease, "?"))

            out.append(("grant", rel(short.header.revision), rel(long.header.revision)))
            for key, lease in [(b"c", short), (b"a", short), (b"d", long), (b"e", None),
                               (b"b", short), (b"g", long)]:
                await put(kv, prefix + key, lease.id if lease else 0)
            await put(kv, prefix + b"b")  # detach
            await kv.delete_range(pb.DeleteRangeRequest(key=prefix + b"g"))  # detach
            t = await kv.txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"f", lease=short.id)),
                pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"h", lease=long.id)),
            ]))
            out.append(("txn", rel(t.header.revision)))
            r = await lc.revoke(long.id)
            out.append(("revoke", rel(r.header.revision)))
            n_events = 6 + 1 + 1 + 2 + 2 + 3  # puts, detach put, delete, txn, revoke, expiry
            events = await w.events(n_events, timeout=EXPIRY_WAIT)
            for e in events:
                out.append((int(e.type), kvt(e.kv), kvt(e.prev_kv)))
        out.append(("after", rel(await current(kv)), await keys_under(kv, prefix)))
        out.append(("ttl", (await lc.time_to_live(short.id)).ttl))
    finally:
        await kv.close()
    return out


async def test_lease_deletes_match_etcd(
    etcd_server: Server, etcdgw_server: Server, prefix: str
) -> None:
    p = prefix.encode()
    want = await _lease_scenario(etcd_server, p)
    got = await _lease_scenario(etcdgw_server, p)
    assert got == want
    # The shape the oracle showed: revoke and expiry each delete in one revision.
    deletes = [x for x in want if x[0] == int(DELETE)]
    revisions = [x[1][2] for x in deletes]
    assert len(set(revisions)) == 3  # the detaching delete, the revoke, the expiry


# -- etcdctl --------------------------------------------------------------------------------------


def _lease_hex(out: str) -> str:
    m = re.match(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)", out)
    assert m is not None, out
    return m.group(1)


def test_etcdctl_lease_commands(etcdctl: Etcdctl, prefix: str) -> None:
    out = etcdctl("lease", "grant", "30").stdout
    lease = _lease_hex(out)
    assert out == f"lease {lease} granted with TTL(30s)\n"
    assert etcdctl("lease", "grant", "1").stdout.endswith(" granted with TTL(2s)\n")  # L06
    etcdctl("put", f"--lease={lease}", prefix + "k2", "v")
    etcdctl("put", f"--lease={lease}", prefix + "k1", "v")

    out = etcdctl("lease", "timetolive", lease).stdout
    assert re.fullmatch(rf"lease {lease} granted with TTL\(30s\), remaining\(\d+s\)\n", out)
    out = etcdctl("lease", "timetolive", "--keys", lease).stdout
    m = re.search(r", attached keys\(\[(.*)\]\)\n$", out)
    assert m is not None, out
    assert sorted(m.group(1).split()) == [prefix + "k1", prefix + "k2"]  # etcd: map order
    assert etcdctl("lease", "keep-alive", "--once", lease).stdout == (
        f"lease {lease} keepalived with TTL(30)\n"
    )
    listed = etcdctl("lease", "list").lines
    assert listed[0].startswith("found ") and lease in listed[1:]

    assert etcdctl("lease", "revoke", lease).stdout == f"lease {lease} revoked\n"
    assert etcdctl("get", "--prefix", prefix).stdout == ""
    assert etcdctl("lease", "timetolive", lease).stdout == f"lease {lease} already expired\n"
    r = etcdctl("lease", "keep-alive", "--once", lease, check=False)
    assert r.rc != 0 and "requested lease not found" in r.stderr
    r = etcdctl("lease", "revoke", lease, check=False)
    assert r.rc != 0
    assert "Error: failed to revoke lease (etcdserver: requested lease not found)" in r.stderr
    r = etcdctl("put", f"--lease={lease}", prefix + "k3", "v", check=False)
    assert r.rc != 0 and "Error: etcdserver: requested lease not found" in r.stderr
    r = etcdctl("lease", "grant", str(MAX_TTL + 1), check=False)
    assert r.rc != 0
    assert "Error: failed to grant lease (etcdserver: too large lease TTL)" in r.stderr


def test_etcdctl_put_with_expiring_lease(etcdctl: Etcdctl, prefix: str) -> None:
    lease = _lease_hex(etcdctl("lease", "grant", "2").stdout)
    etcdctl("put", f"--lease={lease}", prefix + "gone", "v")
    etcdctl("put", prefix + "stays", "v")
    deadline = time.monotonic() + EXPIRY_WAIT
    while etcdctl("get", "--prefix", "--keys-only", prefix).stdout.split() != [prefix + "stays"]:
        assert time.monotonic() < deadline, "the lease's key was not deleted by its expiry"
        time.sleep(0.2)  # poll interval: the loop checks the condition
    assert etcdctl("lease", "timetolive", lease).stdout == f"lease {lease} already expired\n"


# -- etcdgw restart with live leases (L15) -----------------------------------------------------


async def test_restart_never_expires_a_lease_early(
    server_factory: Callable[..., Server], prefix: str
) -> None:
    p = prefix.encode()
    old = server_factory("etcdgw")
    kv = GrpcDriver.connect(old)
    lc = LeaseClient(kv.channel)
    try:
        started = time.monotonic()
        lease = await grant(lc, 5)
        chosen = await grant(lc, 600, 0x5A5A)
        gone = await grant(lc, 600)
        await put(kv, p + b"a", lease.id)
        await put(kv, p + b"b", chosen.id)
        await put(kv, p + b"c", gone.id)
        await lc.revoke(gone.id)
        rev = await current(kv)
    finally:
        await kv.close()
    old.stop()
    new = server_factory("etcdgw", extra_args=("--data-dir", str(old.data_dir)))
    kv = GrpcDriver.connect(new)
    lc = LeaseClient(kv.channel)
    try:
        assert await current(kv) == rev
        assert await keys_under(kv, p) == [p + b"a", p + b"b"]
        ttl = await lc.time_to_live(lease.id, keys=True)
        assert ttl.granted_ttl == 5 and 1 <= ttl.ttl <= 5, ttl  # a sane TTL after the restart
        assert ttl.keys == [p + b"a"]
        assert (await lc.time_to_live(chosen.id, keys=True)).keys == [p + b"b"]
        assert (await lc.time_to_live(gone.id)).ttl == -1  # a revoke is durable too
        ids = {x.id for x in (await lc.leases()).leases}
        assert {lease.id, chosen.id} <= ids and gone.id not in ids
        assert await lc.grant(10, chosen.id) == EXISTS
        assert await lc.keepalive(chosen.id) == 600

        deadline = time.monotonic() + 5 + EXPIRY_WAIT
        while await keys_under(kv, p) != [p + b"b"]:
            assert time.monotonic() < deadline, "the lease did not expire after the restart"
            await asyncio.sleep(0.1)  # poll interval: the loop checks the condition
        assert time.monotonic() - started >= 5.0  # never before its TTL (L15, L16)
        assert await current(kv) == rev + 1  # one revision for the expiry
        assert (await lc.time_to_live(lease.id)).ttl == -1
        await lc.revoke(chosen.id)
    finally:
        await kv.close()


# -- python-etcd3: refresh is one keepalive request on a half-closed stream (L10) --------------


def test_python_etcd3_lease(target: Server, prefix: str) -> None:
    import etcd3  # after tests/conftest.py chose the protobuf implementation

    client = etcd3.client(host=target.host, port=target.port, timeout=10,
                          grpc_options=[("grpc.enable_http_proxy", 0)])
    try:
        lease = client.lease(20)
        client.put(prefix + "a", "1", lease=lease)
        client.put(prefix + "b", "2", lease=lease)
        (reply,) = lease.refresh()
        assert (reply.ID, reply.TTL) == (lease.id, 20)
        assert lease.granted_ttl == 20 and 15 <= lease.remaining_ttl <= 20
        assert sorted(lease.keys) == [(prefix + "a").encode(), (prefix + "b").encode()]
        lease.revoke()
        assert lease.remaining_ttl == -1
        assert list(client.get_prefix(prefix)) == []
        (reply,) = lease.refresh()
        assert reply.TTL == 0  # L09: not an error
    finally:
        client.close()
