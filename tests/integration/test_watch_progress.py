"""The Kubernetes cacher's watch (K8S11, K8S13, K8S14): progress notifications and progress
requests under a live writer, on etcd and etcdgw, both started with a 100 ms progress-notify
interval (etcdgw ``--watch-progress-notify-interval``, etcd 3.4
``--experimental-watch-progress-notify-interval``).

The cacher watches its resource prefix with prev_kv and progress_notify from RV+1 and, while a
consistent read waits, sends a progress_request every 100 ms. For every progress response with
revision R (a request's answer, watch_id -1, or a notification, watch_id = the watcher), every
event at a revision <= R must already have arrived (W23): kube-apiserver serves a consistent LIST
from its cache as soon as a bookmark says the cache is at R.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.driver import GrpcDriver
from support.procs import Server
from support.watch import WatchClient, is_progress, prefix_end

from etcdgw._proto import etcdserverpb as pb

pytestmark = pytest.mark.etcd

NOTIFY_FLAGS = {
    "etcd": ("--experimental-watch-progress-notify-interval", "100ms"),
    "etcdgw": ("--watch-progress-notify-interval", "100ms"),
}


@pytest.fixture(scope="module", params=["etcd", "etcdgw"])
def notify_target(request: pytest.FixtureRequest, server_factory: Any) -> Server:
    server: Server = server_factory(request.param, extra_args=NOTIFY_FLAGS[request.param])
    return server


@pytest.fixture
async def kv(notify_target: Server) -> AsyncIterator[GrpcDriver]:
    driver = GrpcDriver.connect(notify_target)
    try:
        yield driver
    finally:
        await driver.close()


async def test_cacher_progress_under_writes(notify_target: Server, kv: GrpcDriver,
                                            prefix: str) -> None:
    p = prefix.encode()
    seed = await kv.put(pb.PutRequest(key=p + b"seed", value=b"0"))
    rv = seed.header.revision
    writes: list[int] = []  # revisions of acknowledged writes under the prefix

    async def writer() -> None:
        # Bursts of writes with idle gaps: notifications are only due in ticks without events.
        for burst in range(3):
            for i in range(25):
                key = p + b"obj-%d" % (i % 7)
                if i % 5 == 4:
                    r: Any = await kv.delete_range(pb.DeleteRangeRequest(key=key))
                    if r.deleted:
                        writes.append(r.header.revision)
                else:
                    r = await kv.put(pb.PutRequest(key=key, value=b"b%d-%d" % (burst, i)))
                    writes.append(r.header.revision)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.35)

    async with WatchClient.connect(notify_target,
                                   metadata={"hasleader": "true", "source": "cache"}) as w:
        # K8S11: prefix watch from RV+1 with prev_kv and progress_notify.
        created = await w.watch(p, prefix_end(p), start_revision=rv + 1, prev_kv=True,
                                progress_notify=True)
        wid = created.watch_id
        task = asyncio.create_task(writer())

        async def requester() -> None:  # K8S14: a progress_request every 100 ms
            while not task.done():
                await w.progress()
                await asyncio.sleep(0.1)

        req = asyncio.create_task(requester())
        stream: list[pb.WatchResponse] = []
        try:
            while not task.done():
                try:
                    stream.append(await w.recv(timeout=0.5))
                except AssertionError:
                    pass
        finally:
            await task
            await req
        # Everything written must arrive; then one last progress request closes the run.
        await w.progress()
        while True:
            r = await w.recv()
            stream.append(r)
            if r.watch_id == -1 and r.header.revision >= writes[-1]:
                break

    seen: set[int] = set()
    events: list[int] = []
    requested = notified = 0
    for r in stream:
        assert not r.canceled and not r.created
        if r.events:
            assert r.watch_id == wid
            for e in r.events:
                events.append(e.kv.mod_revision)
                seen.add(e.kv.mod_revision)
                # K8S13: a non-create event without prev_kv is fatal for the cacher (W17).
                if not (e.type == 0 and e.kv.version == 1):
                    assert e.prev_kv is not None, f"W17: no prev_kv on {e}"
            continue
        assert is_progress(r), r
        R = r.header.revision
        missing = [x for x in writes if x <= R and x not in seen]
        assert not missing, f"W23: progress at {R} before events {missing}"
        if r.watch_id == -1:
            requested += 1
        else:
            assert r.watch_id == wid
            notified += 1
    # G04: every write once, in order.
    assert events == sorted(writes)
    assert requested >= 5  # W22: answered while the watcher is synced
    assert notified >= 1  # W21: notifications during the idle gaps
