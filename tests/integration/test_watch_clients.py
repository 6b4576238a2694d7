"""Watch as users see it: etcdctl watch (O01) and python-etcd3's watch API (O07), on etcd and
etcdgw. The same commands and assertions run on both targets."""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import etcd3
import etcd3.events
import etcd3.exceptions
import pytest
from support.etcdctl import Etcdctl
from support.procs import Server, clean_env

pytestmark = [
    pytest.mark.etcd,
    # python-etcd3's watch thread never ends on its own: after client.close() it tries to reopen
    # the stream on the closed channel and dies with "Channel closed!". A client quirk.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

TIMEOUT = 10.0


class Running:
    """A long-running etcdctl (watch) whose stdout is read line by line with a deadline."""

    def __init__(self, ctl: Etcdctl, *args: str) -> None:
        self.proc = subprocess.Popen(
            [ctl.binary, *ctl.global_flags, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=clean_env(ETCDCTL_API="3"),
        )
        self._buf = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def lines(self, n: int, timeout: float = TIMEOUT) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self._buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"etcdctl printed {self._buf!r}, wanted {n} lines"
                                     f"\nstderr: {self.stop()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"etcdctl exited; printed {self._buf!r}"
                                     f"\nstderr: {self.stop()}")
            self._buf += chunk
        *got, self._buf = self._buf.split(b"\n", n)
        return [g.decode() for g in got]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


@pytest.fixture
def running(etcdctl: Etcdctl) -> Iterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    for p in procs:
        p.stop()


def revision_of(etcdctl: Etcdctl, key: str) -> int:
    return int(etcdctl("get", key, "-w", "json").json()["header"]["revision"])


def test_etcdctl_watch_prefix_rev_prev_kv(etcdctl: Etcdctl, running: list[Running],
                                          prefix: str) -> None:
    a, b = prefix + "a", prefix + "b"
    etcdctl("put", a, "1")
    r1 = revision_of(etcdctl, a)
    etcdctl("put", a, "2")
    etcdctl("put", b, "x")
    etcdctl("del", a)
    etcdctl("put", prefix[:-1] + "0", "outside")  # not under the prefix
    w = Running(etcdctl, "watch", "--prefix", prefix, f"--rev={r1}", "--prev-kv")
    running.append(w)
    # simple output: type, [prev key, prev value,] key, value.
    assert w.lines(16) == [
        "PUT", a, "1",
        "PUT", a, "1", a, "2",
        "PUT", b, "x",
        "DELETE", a, "2", a, "",
    ]
    etcdctl("put", b, "y")  # live, after the replay
    assert w.lines(5) == ["PUT", b, "x", b, "y"]


def test_etcdctl_watch_single_key_live(etcdctl: Etcdctl, running: list[Running],
                                       prefix: str) -> None:
    key = prefix + "k"
    cur = revision_of(etcdctl, key)
    # From the next revision: no race with the watch's creation.
    w = Running(etcdctl, "watch", key, f"--rev={cur + 1}")
    running.append(w)
    etcdctl("put", key + "x", "other")
    etcdctl("put", key, "v1")
    etcdctl("del", key)
    assert w.lines(5) == ["PUT", key, "v1", "DELETE", key]


def test_etcdctl_watch_interactive_progress(etcdctl: Etcdctl, running: list[Running],
                                            prefix: str) -> None:
    """O01: interactive watch; `progress` sends a progress_request (W22)."""
    key = prefix + "k"
    etcdctl("put", key, "1")
    r1 = revision_of(etcdctl, key)
    etcdctl("del", key)
    w = Running(etcdctl, "watch", "-i", "-w", "json")
    running.append(w)
    w.send(f"watch {key} --rev={r1}")
    resp = json.loads(w.lines(1)[0])
    evs = resp["Events"]
    assert [(e.get("type", 0), e["kv"].get("mod_revision")) for e in evs] == [(0, r1), (1, r1 + 1)]
    w.send("progress")
    note, body = w.lines(2)
    assert note == f"progress notify: {r1 + 1}"
    progress = json.loads(body)
    assert progress["Header"]["revision"] == r1 + 1 and progress["Events"] == []
    assert not progress["Canceled"] and not progress["Created"]


# ---------------------------------------------------------------------------------------------
# python-etcd3


@pytest.fixture
def client(target: Server) -> Iterator[etcd3.Etcd3Client]:
    c = etcd3.client(host=target.host, port=target.port, timeout=10,
                     grpc_options=[("grpc.enable_http_proxy", 0)])
    yield c
    c.close()


def collect(q: queue.Queue[Any], n: int) -> list[Any]:
    """``n`` events from watch callbacks (responses are flattened; errors raised)."""
    out: list[Any] = []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < n:
        item = q.get(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(item, Exception):
            raise item
        out.extend(item.events)
    assert len(out) == n
    return out


def test_etcd3_watch_prefix_callback(client: etcd3.Etcd3Client, prefix: str) -> None:
    q: queue.Queue[Any] = queue.Queue()
    r0 = client.put(prefix + "old", "o").header.revision
    wid = client.add_watch_prefix_callback(prefix, q.put, prev_kv=True)
    r1 = client.put(prefix + "a", "1").header.revision
    client.put(prefix + "a", "2")
    client.delete(prefix + "a")
    client.put(prefix[:-1] + "0", "outside")
    evs = collect(q, 3)
    assert [type(e) for e in evs] == [etcd3.events.PutEvent, etcd3.events.PutEvent,
                                      etcd3.events.DeleteEvent]
    assert [e.key for e in evs] == [(prefix + "a").encode()] * 3
    assert [e.value for e in evs] == [b"1", b"2", b""]
    assert [e.mod_revision for e in evs] == [r1, r1 + 1, r1 + 2]
    assert [e.version for e in evs] == [1, 2, 0]
    assert evs[1].prev_value == b"1" and evs[2].prev_value == b"2"
    client.cancel_watch(wid)
    client.put(prefix + "a", "after-cancel")
    time.sleep(0.3)  # a canceled watch's callback must not run again
    assert q.empty()

    # A watch from a past revision replays (W10).
    q2: queue.Queue[Any] = queue.Queue()
    wid = client.add_watch_callback(prefix + "old", q2.put, start_revision=r0)
    (ev,) = collect(q2, 1)
    assert ev.mod_revision == r0 and ev.value == b"o"
    client.cancel_watch(wid)


def test_etcd3_watch_iterator(client: etcd3.Etcd3Client, prefix: str) -> None:
    key = prefix + "k"
    r = client.put(key, "v0").header.revision
    it, cancel = client.watch(key, start_revision=r)
    client.put(key, "v1")
    got = []
    for ev in it:
        got.append((ev.value, ev.mod_revision))
        if len(got) == 2:
            break
    cancel()
    assert got == [(b"v0", r), (b"v1", r + 1)]


def test_etcd3_watch_compacted(client: etcd3.Etcd3Client, prefix: str) -> None:
    """W08/O07: a watch below the compaction point reports RevisionCompactedError."""
    key = prefix + "k"
    r1 = client.put(key, "1").header.revision
    r2 = client.put(key, "2").header.revision
    client.compact(r2, physical=True)
    q: queue.Queue[Any] = queue.Queue()
    client.add_watch_callback(key, q.put, start_revision=r1)
    err = q.get(timeout=TIMEOUT)
    assert isinstance(err, etcd3.exceptions.RevisionCompactedError)
    assert err.compacted_revision == r2
