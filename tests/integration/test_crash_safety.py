"""Crash safety: SIGKILL the gateway while clients write; a restart loses nothing acknowledged.

The writers run Kubernetes-shaped requests: plain Puts, and Txns that write two keys at once
(an object and its index entry). After the kill and a restart on the same data dir:
- every acknowledged write is there, with the revision its response reported;
- no Txn is half applied (both of its keys, or neither, at one revision);
- revisions are dense from 2 up to the store revision, and the store accepts new writes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from support.procs import Server, start_etcdgw

from etcdgw._proto import etcdserverpb as pb

WRITERS = 16
KILL_AFTER_ACKS = 400


def _txn_pair(i: int, w: int) -> pb.TxnRequest:
    obj, idx = b"/crash/obj/%d/%d" % (w, i), b"/crash/idx/%d/%d" % (w, i)
    return pb.TxnRequest(
        compare=[pb.Compare(key=obj, target=pb.CompareCompareTarget.MOD, mod_revision=0)],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=obj, value=b"o%d" % i)),
            pb.RequestOp(request_put=pb.PutRequest(key=idx, value=b"i%d" % i)),
        ],
    )


async def _writer(stub: pb.KvStub, w: int, acked: dict[bytes, tuple[bytes, int]],
                  pairs: list[tuple[bytes, bytes, int]], enough: asyncio.Event) -> None:
    i = 0
    while True:
        i += 1
        try:
            if i % 2:
                key = b"/crash/put/%d/%d" % (w, i)
                resp = await stub.put(pb.PutRequest(key=key, value=b"v%d" % i))
                acked[key] = (b"v%d" % i, resp.header.revision)
            else:
                tresp = await stub.txn(_txn_pair(i, w))
                assert tresp.succeeded
                pairs.append((b"/crash/obj/%d/%d" % (w, i), b"/crash/idx/%d/%d" % (w, i),
                              tresp.header.revision))
        except (GRPCError, StreamTerminatedError, ConnectionError, OSError):
            return  # the server died under us: this write was not acknowledged
        if len(acked) + len(pairs) >= KILL_AFTER_ACKS:
            enough.set()


async def _write_until_killed(server: Server) -> tuple[dict[bytes, tuple[bytes, int]],
                                                       list[tuple[bytes, bytes, int]]]:
    acked: dict[bytes, tuple[bytes, int]] = {}
    pairs: list[tuple[bytes, bytes, int]] = []
    enough = asyncio.Event()
    channel = Channel(server.host, server.port)
    stub = pb.KvStub(channel)
    try:
        tasks = [asyncio.create_task(_writer(stub, w, acked, pairs, enough))
                 for w in range(WRITERS)]
        await asyncio.wait_for(enough.wait(), timeout=60)
        os.kill(server.process.pid, signal.SIGKILL)  # mid-stream: writers are still going
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    finally:
        channel.close()
    server.process.wait(timeout=10)
    server.stopped = True
    return acked, pairs


async def test_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    first = start_etcdgw(tmp_path / "first")
    acked, pairs = await _write_until_killed(first)
    assert first.process.returncode == -signal.SIGKILL
    assert len(acked) + len(pairs) >= KILL_AFTER_ACKS

    second = start_etcdgw(tmp_path / "second", extra_args=("--data-dir", str(first.data_dir)))
    try:
        channel = Channel(second.host, second.port)
        stub = pb.KvStub(channel)
        try:
            everything = await stub.range(pb.RangeRequest(key=b"/crash/", range_end=b"/crash0"))
            found = {kv.key: kv for kv in everything.kvs}
            for key, (value, rev) in acked.items():
                assert key in found, f"acknowledged put {key!r} at {rev} lost"
                assert (found[key].value, found[key].mod_revision) == (value, rev)
            for obj, idx, rev in pairs:
                assert obj in found and idx in found, f"acknowledged txn at {rev} lost"
                assert found[obj].mod_revision == found[idx].mod_revision == rev
            # No half-applied txn, acknowledged or not: an obj key never stands without its idx.
            for key, kv in found.items():
                if key.startswith(b"/crash/obj/"):
                    twin = found.get(key.replace(b"/obj/", b"/idx/", 1))
                    assert twin is not None and twin.mod_revision == kv.mod_revision, key
            # Dense revisions: every revision 2..current holds exactly one write.
            revs = sorted({kv.mod_revision for kv in found.values()})
            current = everything.header.revision
            assert revs == list(range(2, current + 1))
            # And the restarted store keeps going from there.
            put = await stub.put(pb.PutRequest(key=b"/crash/after", value=b"x"))
            assert put.header.revision == current + 1
        finally:
            channel.close()
    finally:
        second.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_graceful_stop_keeps_every_write(tmp_path: Path, signum: int) -> None:
    """SIGTERM/SIGINT: in-flight writes finish or fail cleanly, the exit status is 0, and a
    restart serves every acknowledged write."""
    first = start_etcdgw(tmp_path / "first")
    channel = Channel(first.host, first.port)
    stub = pb.KvStub(channel)
    try:
        revs = [
            (await stub.put(pb.PutRequest(key=b"/stop/%d" % i, value=b"v"))).header.revision
            for i in range(50)
        ]
    finally:
        channel.close()
    first.process.send_signal(signum)
    assert first.process.wait(timeout=10) == 0
    first.stopped = True

    second = start_etcdgw(tmp_path / "second", extra_args=("--data-dir", str(first.data_dir)))
    try:
        channel = Channel(second.host, second.port)
        try:
            resp = await pb.KvStub(channel).range(
                pb.RangeRequest(key=b"/stop/", range_end=b"/stop0"))
            assert sorted(kv.mod_revision for kv in resp.kvs) == revs
            assert resp.header.revision == revs[-1]
        finally:
            channel.close()
    finally:
        second.stop()
