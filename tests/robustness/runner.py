"""The robustness workload: clients and watchers against a target, every operation recorded.

Each client is pinned to one gateway (client i -> gateway i % n) and runs a closed loop of
random operations on a few shared keys: put, linearizable get, serializable get, CAS by value
(``Txn{VALUE(k) == v; Put}``), CAS by mod revision (``Txn{MOD(k) == r; Put}``, the Kubernetes
update) and delete. Every value ever written is unique, so a value read names the one write
that made it (the checker relies on that). Every operation is recorded with its invocation and
completion time (one monotonic clock, this process) and its outcome:

- completed: the response (read value and mod revision, CAS success, deleted count, header
  revision);
- failed: an error that guarantees nothing happened (the connection was refused, so nothing
  was sent; RESOURCE_EXHAUSTED ``too many requests``, which etcd and etcdgw answer only for
  requests they did not apply);
- unknown: anything else for a write (timeout, broken connection, UNAVAILABLE, a server that
  died or paused): it may or may not have taken effect, at any time after its invocation. An
  unknown read constrains nothing and is dropped by the checker.

One watcher per gateway watches the whole key prefix from revision 1 and, whenever its stream
breaks, resumes from its last revision + 1 on the same gateway, recording every event and every
resume. The fault injector (faults.py) runs beside them. The run ends with the faults healed,
every gateway up, and the watchers caught up with the final revision.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from etcdgw._proto import etcdserverpb as pb

from .history import History, Op, WatchEvent, WatchLog

__all__ = ["Endpoint", "Workload", "run_workload"]

#: A write whose answer takes longer than this is recorded as unknown (the client gives up).
OP_TIMEOUT = 2.0
WATCH = "/etcdserverpb.Watch/Watch"

#: (kind, weight): the operation mix.
MIX: tuple[tuple[str, int], ...] = (
    ("put", 20), ("get", 25), ("sget", 10), ("cas_value", 15), ("cas_rev", 20), ("delete", 10),
)

Endpoint = tuple[str, int]


@dataclass
class Workload:
    clients: int = 8
    keys: int = 4
    prefix: bytes = b"/robustness/"
    seed: int = 0

    def key(self, i: int) -> bytes:
        return self.prefix + b"k%d" % i


@dataclass
class _Client:
    cid: int
    gateway: int
    endpoint: Endpoint
    rng: random.Random
    ops: list[Op]
    seq: int = 0
    channel: Channel | None = None
    # What this client last read of each key: (value, mod revision), (None, 0) when absent.
    seen: dict[bytes, tuple[bytes | None, int]] = field(default_factory=dict)

    def kv(self) -> Any:
        if self.channel is None:
            self.channel = Channel(*self.endpoint)
        return pb.KvStub(self.channel)

    def drop_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


#: What a call can raise when the server dies, pauses or drops the connection.
_LOST = (GRPCError, StreamTerminatedError, OSError, TimeoutError)


def _lost_connection(exc: BaseException) -> bool:
    """grpclib (0.4) raises AttributeError ``'Connection' object has no attribute
    '_transport'`` when the connection is lost between taking it from the channel and opening
    the stream: a broken connection like the others, not a bug of this harness."""
    return isinstance(exc, _LOST) or (
        isinstance(exc, AttributeError) and "'_transport'" in str(exc))


def _definite_failure(exc: BaseException) -> bool:
    """Errors that guarantee the request had no effect."""
    if isinstance(exc, ConnectionRefusedError):
        return True  # nothing was sent
    return isinstance(exc, GRPCError) and exc.status == Status.RESOURCE_EXHAUSTED


def _txn_for(kind: str, key: bytes, value: bytes, seen: tuple[bytes | None, int]) -> Any:
    expect, mod = seen
    if kind == "cas_rev":
        cmp = pb.Compare(key=key, target=pb.CompareCompareTarget.MOD,
                         result=pb.CompareCompareResult.EQUAL, mod_revision=mod)
    elif expect is None:  # absent: VALUE compares fail on a missing key; CREATE == 0 does not
        cmp = pb.Compare(key=key, target=pb.CompareCompareTarget.CREATE,
                         result=pb.CompareCompareResult.EQUAL, create_revision=0)
    else:
        cmp = pb.Compare(key=key, target=pb.CompareCompareTarget.VALUE,
                         result=pb.CompareCompareResult.EQUAL, value=expect)
    put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))
    return pb.TxnRequest(compare=[cmp], success=[put])


async def _one_op(c: _Client, w: Workload) -> None:
    kinds, weights = zip(*MIX, strict=True)
    kind = c.rng.choices(kinds, weights)[0]
    key = w.key(c.rng.randrange(w.keys))
    c.seq += 1
    value = b"c%d-%d" % (c.cid, c.seq)
    seen = c.seen.get(key, (None, 0))
    stub = c.kv()
    invoke = time.monotonic()
    base: dict[str, Any] = dict(client=c.cid, gateway=c.gateway, key=key, invoke=invoke,
                                value=None, expect=None, expect_rev=None, serializable=False)
    try:
        if kind in ("get", "sget"):
            r = await stub.range(pb.RangeRequest(key=key, serializable=kind == "sget"),
                                 timeout=OP_TIMEOUT)
            done = time.monotonic()
            kv = r.kvs[0] if r.kvs else None
            read = (kv.value, int(kv.mod_revision)) if kv is not None else (None, 0)
            c.seen[key] = read
            c.ops.append(Op(**{**base, "serializable": kind == "sget"}, kind="get",
                            complete=done, failed=False, ok=True, read=read[0],
                            read_mod_rev=read[1], revision=int(r.header.revision)))
        elif kind == "put":
            base["value"] = value
            r = await stub.put(pb.PutRequest(key=key, value=value), timeout=OP_TIMEOUT)
            c.ops.append(Op(**base, kind="put", complete=time.monotonic(), failed=False,
                            ok=True, read=None, read_mod_rev=0,
                            revision=int(r.header.revision)))
        elif kind == "delete":
            r = await stub.delete_range(pb.DeleteRangeRequest(key=key), timeout=OP_TIMEOUT)
            c.ops.append(Op(**base, kind="delete", complete=time.monotonic(), failed=False,
                            ok=r.deleted > 0, read=None, read_mod_rev=0,
                            revision=int(r.header.revision)))
        else:
            base.update(value=value, expect=seen[0],
                        expect_rev=seen[1] if kind == "cas_rev" else None)
            r = await stub.txn(_txn_for(kind, key, value, seen), timeout=OP_TIMEOUT)
            c.ops.append(Op(**base, kind="cas", complete=time.monotonic(), failed=False,
                            ok=bool(r.succeeded), read=None, read_mod_rev=0,
                            revision=int(r.header.revision)))
            if r.succeeded:
                c.seen[key] = (value, int(r.header.revision))
    except Exception as exc:
        if not _lost_connection(exc):
            raise
        failed = _definite_failure(exc)
        if not failed:
            c.drop_channel()  # a fresh connection for the next call (the old one may hang)
        if kind in ("get", "sget"):
            return  # an unanswered read constrains nothing
        if kind == "put":
            base["value"] = value
        elif kind.startswith("cas"):
            base.update(value=value, expect=seen[0],
                        expect_rev=seen[1] if kind == "cas_rev" else None)
        op_kind = {"put": "put", "delete": "delete"}.get(kind, "cas")
        c.ops.append(Op(**base, kind=op_kind, complete=time.monotonic() if failed else None,
                        failed=failed, ok=False, read=None, read_mod_rev=0, revision=0))
        if failed and isinstance(exc, ConnectionRefusedError):
            await asyncio.sleep(0.05)  # a gateway that is down: do not spin on it


async def _client_loop(c: _Client, w: Workload, stop: asyncio.Event) -> None:
    try:
        while not stop.is_set():
            await _one_op(c, w)
    finally:
        c.drop_channel()


class _Watcher:
    """One watch of the prefix on one gateway, resumed after every break."""

    def __init__(self, wid: int, gateway: int, endpoint: Callable[[], Endpoint],
                 prefix: bytes) -> None:
        self.log = WatchLog(watcher=wid, gateway=gateway, start_rev=1, events=[], resumes=[])
        self._endpoint = endpoint
        self._prefix = prefix
        self.last_rev = 0
        self.advanced = asyncio.Event()
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        start = 1
        first = True
        while not stop.is_set():
            if not first:
                self.log.resumes.append((start, len(self.log.events)))
            first = False
            try:
                await self._stream(start)
            except Exception as exc:
                if not _lost_connection(exc):
                    raise
                if isinstance(exc, GRPCError) and exc.status not in (
                        Status.UNAVAILABLE, Status.CANCELLED, Status.UNKNOWN,
                        Status.DEADLINE_EXCEEDED):
                    self.errors.append(f"watch on gateway {self.log.gateway}: {exc!r}")
            start = self.last_rev + 1 if self.last_rev else 1
            if not stop.is_set():
                await asyncio.sleep(0.1)  # back off before dialling again

    async def _stream(self, start: int) -> None:
        end = bytearray(self._prefix)
        end[-1] += 1
        channel = Channel(*self._endpoint())
        try:
            async with channel.request(WATCH, Cardinality.STREAM_STREAM, pb.WatchRequest,
                                       pb.WatchResponse) as stream:
                await stream.send_message(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=self._prefix, range_end=bytes(end), start_revision=start)))
                while True:
                    r = await asyncio.wait_for(stream.recv_message(), 5.0)
                    if r is None:
                        return
                    if r.canceled:
                        self.errors.append(f"watch on gateway {self.log.gateway} canceled: "
                                           f"{r.cancel_reason!r}")
                        return
                    for ev in r.events:
                        kv = ev.kv
                        deleted = int(ev.type) == 1
                        self.log.events.append(WatchEvent(
                            rev=int(kv.mod_revision), key=kv.key,
                            value=None if deleted else kv.value, mod_rev=int(kv.mod_revision)))
                        self.last_rev = int(kv.mod_revision)
                    if r.events:
                        self.advanced.set()
                        self.advanced = asyncio.Event()
        except TimeoutError:
            return  # quiet for 5 s: dial again (a paused gateway keeps the socket open)
        finally:
            channel.close()

    async def reach(self, rev: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.last_rev < rev:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):
                    await self.advanced.wait()
            except TimeoutError:
                return False
        return True


async def final_revision(endpoints: Sequence[Endpoint], within: float = 30.0) -> int:
    """The log's revision through every gateway (linearizable Range); all must agree."""
    deadline = time.monotonic() + within
    while True:
        try:
            revs = []
            for ep in endpoints:
                channel = Channel(*ep)
                try:
                    r = await pb.KvStub(channel).range(pb.RangeRequest(key=b"\0absent"),
                                                       timeout=OP_TIMEOUT)
                    revs.append(int(r.header.revision))
                finally:
                    channel.close()
            return max(revs)
        except Exception as exc:
            if not _lost_connection(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def read_log(endpoint: Endpoint, prefix: bytes,
                   final_rev: int) -> dict[int, list[WatchEvent]]:
    """Every revision of the prefix from 1 through ``final_rev``, by a fresh watch."""
    w = _Watcher(-1, 0, lambda: endpoint, prefix)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        if final_rev > 1 and not await w.reach(final_rev, 30.0):
            raise AssertionError(f"the log could not be read up to {final_rev}: "
                                 f"got to {w.last_rev}; {w.errors}")
    finally:
        stop.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    out: dict[int, list[WatchEvent]] = {}
    for ev in w.log.events:
        if ev.rev <= final_rev:
            out.setdefault(ev.rev, []).append(ev)
    return out


async def run_workload(endpoints: Callable[[], Sequence[Endpoint]], w: Workload,
                       duration: float, faults: Callable[[asyncio.Event], Awaitable[None]]
                       ) -> tuple[History, list[str]]:
    """Clients and watchers for ``duration`` seconds while ``faults`` runs (it must return
    with every fault healed once the event is set); then the final revision, the log, and the
    watchers caught up. ``endpoints()`` is read again whenever a connection is made (a
    restarted gateway keeps its port, but a target may move one)."""
    rng = random.Random(w.seed)
    eps = list(endpoints())
    n = len(eps)
    ops: list[Op] = []
    clients = [_Client(i, i % n, eps[i % n], random.Random(rng.random()), ops)
               for i in range(w.clients)]
    watchers = [_Watcher(g, g, (lambda g=g: endpoints()[g]), w.prefix) for g in range(n)]
    stop, stop_faults, stop_watching = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(_client_loop(c, w, stop)) for c in clients]
    watch_tasks = [asyncio.create_task(wt.run(stop_watching)) for wt in watchers]
    fault_task = asyncio.create_task(faults(stop_faults))
    problems: list[str] = []
    try:
        await asyncio.sleep(duration)  # the run's length, not a synchronisation
    finally:
        stop_faults.set()
        await fault_task  # healed: every gateway up, Cosmos answering
        stop.set()
        await asyncio.gather(*tasks)
    final = await final_revision(endpoints())
    for wt in watchers:
        if not await wt.reach(final, 30.0):
            problems.append(f"watcher on gateway {wt.log.gateway} stuck at revision "
                            f"{wt.last_rev} < {final}")
    stop_watching.set()
    for t in watch_tasks:
        t.cancel()
    await asyncio.gather(*watch_tasks, return_exceptions=True)
    for wt in watchers:
        problems += wt.errors
    log = await read_log(endpoints()[0], w.prefix, final)
    history = History(ops=ops, watches=[wt.log for wt in watchers], final_rev=final, log=log)
    return history, problems
