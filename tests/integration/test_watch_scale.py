"""Watch fan-out at scale: 10,000 watchers over 100 streams on one prefix receive every event of
1,000 writes, in order, with no gap or duplicate (G04, W15, W23), from a server subprocess.

The client must not be the bottleneck, so it does not decode 10 million events one by one:
responses arrive as raw bytes, a minimal parser finds each response's watch_id and the run of
framed events (field 11, last in the message), and each watcher keeps a running SHA-256 of its
event bytes. The expected events are built from the acknowledged writes (every revision once,
ascending, exact KeyValue fields) and encoded with betterproto2; one reference watcher keeps its
bytes and is compared event by event (a readable failure), every watcher's digest must equal the
digest of the expected bytes: same events, same order, no gap, no duplicate. On etcdgw a stream
is complete when a progress request, retried every 100 ms as kube-apiserver does, is answered
with a revision >= the last write (W22/W23).

Writes come from 100 concurrent writers, as from many clients: the store commits them in groups
and a watcher whose previous response is still queued gets later revisions merged into it.

Runs on etcdgw (see the test for why not on etcd). Sizes can be lowered with
ETCDGW_SCALE=streams,watchers_per_stream,writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from support.driver import GrpcDriver
from support.procs import Server
from support.watch import WATCH, prefix_end

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

pytestmark = pytest.mark.etcd

STREAMS, PER_STREAM, WRITES = (
    int(x) for x in os.environ.get("ETCDGW_SCALE", "100,100,1000").split(",")
)
CONNECTIONS = 4  # streams spread over a few HTTP/2 connections
WRITERS = 100  # concurrent writers (one connection): the store commits them in groups


class RawCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


class Parsed:
    __slots__ = ("canceled", "created", "events", "revision", "watch_id")

    def __init__(self, data: bytes) -> None:
        """Top-level WatchResponse fields; ``events`` = the bytes from the first field-11 tag
        to the end (every server encodes fields in number order and events is the last)."""
        self.watch_id = 0
        self.created = self.canceled = False
        self.revision = 0
        self.events = b""
        i, n = 0, len(data)
        while i < n:
            key, j = _varint(data, i)
            fnum, wt = key >> 3, key & 7
            if fnum == 11:
                self.events = data[i:]
                return
            if wt == 0:
                v, i = _varint(data, j)
                if fnum == 2:
                    self.watch_id = v - (1 << 64) if v >= 1 << 63 else v
                elif fnum == 3:
                    self.created = bool(v)
                elif fnum == 4:
                    self.canceled = bool(v)
            elif wt == 2:
                ln, j = _varint(data, j)
                if fnum == 1:
                    self.revision = pb.ResponseHeader.parse(data[j:j + ln]).revision
                i = j + ln
            else:
                raise AssertionError(f"unexpected wire type {wt} in {data[:64]!r}")


class StreamState:
    def __init__(self, index: int) -> None:
        self.index = index
        self.digests: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}
        self.created = 0
        self.reference = bytearray() if index == 0 else None
        self.progress_rev = 0
        self.responses = 0


async def _run_stream(ch: Channel, st: StreamState, p: bytes,
                      target: asyncio.Future[tuple[int, int]], ready: asyncio.Event,
                      all_created: asyncio.Event, use_progress: bool) -> None:
    """Until complete: by progress (>= the last write, W23), or, for etcd 3.4.23, which
    answers progress requests before unsynced watchers caught up (fixed in 3.4.25/3.5.8,
    W22/W23), by every watcher holding as many event bytes as the writes make."""

    def complete() -> bool:
        if not target.done():
            return False
        last, size = target.result()
        if use_progress:
            return st.progress_rev >= last
        return all(n >= size for n in st.sizes.values())

    async with ch.request(WATCH, Cardinality.STREAM_STREAM, bytes, bytes) as s:
        await s.send_request()
        create = bytes(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=p, range_end=prefix_end(p))))
        for _ in range(PER_STREAM):
            await s.send_message(create)
        progress = bytes(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

        async def requester() -> None:
            await target
            while not complete():
                if use_progress:
                    await s.send_message(progress)
                await asyncio.sleep(0.1)
            done.set()

        done = asyncio.Event()
        reader = asyncio.create_task(_read(s, st, ready))
        finished = asyncio.create_task(done.wait())
        req: asyncio.Task[None] | None = None
        try:
            await ready.wait()
            await all_created.wait()
            req = asyncio.create_task(requester())
            await asyncio.wait([reader, finished], return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()
        finally:
            for t in (req, reader, finished):
                if t is not None:
                    t.cancel()
            await s.cancel()


async def _read(s: Any, st: StreamState, ready: asyncio.Event) -> None:
    while True:
        data = await s.recv_message()
        assert data is not None, "stream ended"
        st.responses += 1
        r = Parsed(data)
        if r.created:
            assert not r.canceled, f"create refused: {data!r}"
            st.digests[r.watch_id] = hashlib.sha256()
            st.sizes[r.watch_id] = 0
            st.created += 1
            if st.created == PER_STREAM:
                ready.set()
            continue
        assert not r.canceled, f"watcher {r.watch_id} canceled"
        if r.watch_id == -1:
            st.progress_rev = max(st.progress_rev, r.revision)
            continue
        assert r.events, f"response without events: {data[:80]!r}"
        st.digests[r.watch_id].update(r.events)
        st.sizes[r.watch_id] += len(r.events)
        if st.reference is not None and r.watch_id == 0:
            st.reference += r.events


async def _scale(server: Server) -> dict[str, float]:
    p = b"/scale/" + uuid.uuid4().hex[:6].encode() + b"/"
    loop = asyncio.get_running_loop()
    channels = [Channel(server.host, server.port, codec=RawCodec()) for _ in range(CONNECTIONS)]
    kv = GrpcDriver.connect(server)
    states = [StreamState(i) for i in range(STREAMS)]
    readies = [asyncio.Event() for _ in states]
    all_created = asyncio.Event()
    target: asyncio.Future[tuple[int, int]] = loop.create_future()
    use_progress = server.kind == "etcdgw"
    t0 = time.monotonic()
    tasks = [asyncio.create_task(_run_stream(channels[i % CONNECTIONS], st, p, target,
                                             readies[i], all_created, use_progress))
             for i, st in enumerate(states)]
    writes: list[tuple[int, bytes, bytes]] = []  # (revision, key, value) of every put
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
        all_created.set()
        t_created = time.monotonic()

        async def writer(w: int) -> None:
            for i in range(w, WRITES, WRITERS):
                key, value = p + b"k%d" % (i % 50), b"v%d" % i
                r = await kv.put(pb.PutRequest(key=key, value=value))
                assert isinstance(r, pb.PutResponse), r
                writes.append((r.header.revision, key, value))

        await asyncio.gather(*(writer(w) for w in range(WRITERS)))
        t_written = time.monotonic()
        writes.sort()
        # The exact events every watcher must get, encoded as a run of WatchResponse.events.
        versions: dict[bytes, tuple[int, int]] = {}  # key -> (create, version)
        want_events = []
        for rev, key, value in writes:
            create, version = versions.get(key, (rev, 0))
            versions[key] = (create, version + 1)
            want_events.append(mvccpb.Event(type=mvccpb.EventEventType.PUT, kv=mvccpb.KeyValue(
                key=key, create_revision=create, mod_revision=rev, version=version + 1,
                value=value)))
        want = bytes(pb.WatchResponse(events=want_events))
        target.set_result((writes[-1][0], len(want)))
        done, pending = await asyncio.wait(tasks, timeout=120)
        for t in done:
            t.result()
        assert not pending, f"{len(pending)} streams never complete"
        t_done = time.monotonic()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            ch.close()
        await kv.close()

    # The reference watcher, decoded and compared event by event (a readable failure) ...
    ref = states[0].reference
    assert ref is not None
    got = [(e.kv.mod_revision, e.kv.key, e.kv.version) for e in
           pb.WatchResponse.parse(bytes(ref)).events]
    assert got == [(e.kv.mod_revision, e.kv.key, e.kv.version) for e in want_events]
    assert bytes(ref) == want
    # ... then every watcher, by digest: same bytes, so same events, order, no gap/duplicate.
    digest = hashlib.sha256(want).hexdigest()
    n = 0
    for st in states:
        assert st.created == PER_STREAM
        for wid, d in st.digests.items():
            assert st.sizes[wid] == len(want) and d.hexdigest() == digest, (
                f"stream {st.index} watcher {wid}: {st.sizes[wid]} bytes, want {len(want)}")
            n += 1
    assert n == STREAMS * PER_STREAM
    return {
        "create": t_created - t0,
        "write": t_written - t_created,
        "deliver": t_done - t_written,
        "total": t_done - t0,
        "responses": sum(st.responses for st in states),
    }


@pytest.mark.parametrize("kind", ["etcdgw"])
async def test_watch_fan_out(kind: str, server_factory: Any,
                             capsys: pytest.CaptureFixture[str]) -> None:
    # Gateway only: against etcd 3.4 on the shared 2-core CI machine the same run timed out
    # in etcd's Put path while it fanned out (even at a tenth of the watchers), so it proved
    # nothing about the test. The fan-out comparison with etcd lives in `bench watch-fanout`.
    server: Server = server_factory(kind)
    times = await _scale(server)
    with capsys.disabled():
        print(f"\n{kind}: {STREAMS} streams x {PER_STREAM} watchers, {WRITES} writes: "
              + ", ".join(f"{k} {v:.1f}" + ("" if k == "responses" else " s")
                          for k, v in times.items()))
