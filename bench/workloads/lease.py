"""``lease-keepalive``: N leases, each kept alive every second through LeaseKeepAlive streams.

Each client process (``--procs``, default 1) grants its share of ``--leases`` leases (TTL 60 s,
not timed), opens its share of ``--streams`` bidirectional ``/etcdserverpb.Lease/LeaseKeepAlive``
streams (grpcio asyncio over ``--channels`` connections) and gives each stream an even share of
the leases. After the barrier every stream sends one keepalive per lease per second (``--rate``
per lease, default 1), open loop, spread evenly over the second (stream s, lease i at
``i / (k * rate)`` plus the stream's phase), and reads the answers in order.

Figures: keepalives/s = answers received in the recorded window / its length; latency = answer
arrival - request written (requests written in the window); every answer must carry the ID of
the oldest request outstanding on its stream and a TTL > 0 (else an error: the lease expired or
the answers went out of order). Leases are revoked after the run (not timed).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from array import array
from typing import Any, ClassVar

import grpc
import grpc.aio

from bench.proto import rpc_pb2
from bench.streams import CpuWindow, light, run_procs, wait_barrier
from bench.targets import Target
from bench.workloads.base import Params, Workload
from bench.workloads.watch import _channel, _split

KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
GRANT = "/etcdserverpb.Lease/LeaseGrant"
REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
TTL = 60
HERE = "bench.workloads.lease"


async def lease_main(
    target: Target, cfg: dict[str, Any], per_stream: list[int], barrier: Any, shared: dict[str, Any]
) -> dict[str, Any]:
    nch = max(1, min(cfg["channels"], len(per_stream)))
    channels = [_channel(target, f"{os.getpid()}-l{i}") for i in range(nch)]
    st = {"sent": 0, "answers": 0, "in_window": 0, "errors": 0}
    first_error: list[str] = []
    lat = array("d")

    def error(msg: str) -> None:
        st["errors"] += 1
        if not first_error:
            first_error.append(msg)

    grant = channels[0].unary_unary(
        GRANT,
        request_serializer=rpc_pb2.LeaseGrantRequest.SerializeToString,
        response_deserializer=rpc_pb2.LeaseGrantResponse.FromString,
    )
    revoke = channels[0].unary_unary(
        REVOKE,
        request_serializer=rpc_pb2.LeaseRevokeRequest.SerializeToString,
        response_deserializer=rpc_pb2.LeaseRevokeResponse.FromString,
    )
    ids: list[int] = []
    try:
        total = sum(per_stream)
        todo = iter(range(total))

        async def granter() -> None:
            for _ in todo:
                r = await grant(rpc_pb2.LeaseGrantRequest(TTL=TTL), timeout=30)
                if r.error:
                    raise RuntimeError(f"LeaseGrant: {r.error}")
                ids.append(r.ID)

        await asyncio.gather(*(granter() for _ in range(32)))
        calls = [channels[i % nch].stream_stream(KEEPALIVE)() for i in range(len(per_stream))]
        groups, at = [], 0
        for n in per_stream:
            groups.append(ids[at : at + n])
            at += n
        await wait_barrier(barrier)
        t0 = time.monotonic()
        rec_start = t0 + cfg["warmup"]
        end = rec_start + cfg["duration"]
        cpu = CpuWindow(rec_start, end)
        parse = rpc_pb2.LeaseKeepAliveResponse.FromString

        async def stream(si: int, call: Any, leases: list[int]) -> None:
            if not leases:
                return
            reqs = [rpc_pb2.LeaseKeepAliveRequest(ID=i).SerializeToString() for i in leases]
            fifo: collections.deque[tuple[int, float]] = collections.deque()
            interval = 1.0 / (len(leases) * cfg["rate"])
            phase = interval * si / max(1, len(per_stream))

            async def reader() -> None:
                mono = time.monotonic
                while True:
                    data = await call.read()
                    if data is grpc.aio.EOF:
                        return
                    t = mono()
                    r = parse(data)
                    if not fifo:
                        error(f"unexpected keepalive answer for {r.ID:x}")
                        continue
                    lid, s = fifo.popleft()
                    st["answers"] += 1
                    if r.ID != lid:
                        error(f"keepalive answer for {r.ID:x}, expected {lid:x}")
                    elif r.TTL <= 0:
                        error(f"lease {lid:x} expired (TTL {r.TTL})")
                    if rec_start <= t < end:
                        st["in_window"] += 1
                    if s >= rec_start:
                        lat.append(t - s)

            rd = asyncio.ensure_future(reader())
            i = 0
            while True:
                due = t0 + phase + i * interval
                if due >= end:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                k = i % len(leases)
                fifo.append((leases[k], time.monotonic()))
                await call.write(reqs[k])
                st["sent"] += 1
                i += 1
            await call.done_writing()
            try:
                await asyncio.wait_for(rd, timeout=15)
            except TimeoutError:
                error(f"{len(fifo)} keepalives unanswered 15 s after the last")
                call.cancel()

        await asyncio.gather(
            *(stream(i, c, g) for i, (c, g) in enumerate(zip(calls, groups, strict=True)))
        )
        client_cpu = await cpu.result()
        return {
            **st,
            "lat": lat.tobytes(),
            "cpu": client_cpu,
            "first_error": first_error[0] if first_error else None,
        }
    finally:
        todo_ids = iter(list(ids))

        async def revoker() -> None:
            for lid in todo_ids:
                try:
                    await revoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=10)
                except grpc.aio.AioRpcError:
                    pass

        try:
            await asyncio.gather(*(revoker() for _ in range(32)))
        finally:
            for ch in channels:
                await ch.close()


class LeaseKeepalive(Workload):
    name = "lease-keepalive"
    summary = "1,000 leases kept alive every second through streams"
    stream = True
    default_rate: ClassVar[float] = 1.0
    rate_label = "keepalives/s"
    figures = ("keepalives/s", "p50 ms", "p99 ms", "max ms")

    def levels(self, args: Any) -> list[dict[str, Any]]:
        ls = args.leases or (1000,)
        ss = args.streams or (10,)
        if len(ls) != len(ss) and 1 not in (len(ls), len(ss)):
            raise SystemExit(
                "--leases and --streams: give as many values each (paired), or one for either"
            )
        n = max(len(ls), len(ss))
        ls, ss = (ls * n if len(ls) == 1 else ls), (ss * n if len(ss) == 1 else ss)
        return [
            {"leases": n_, "streams": s, "clients": s, "label": f"leases={n_} streams={s}"}
            for n_, s in zip(ls, ss, strict=True)
        ]

    def run_round(self, target: Target, params: Params, rnd: int) -> dict[str, Any]:
        from bench.report import percentile  # (report imports runner, which imports workloads)

        rate = params.rate or self.default_rate
        streams = max(1, min(params.streams, params.leases))
        procs = max(1, min(params.procs, streams))
        per_stream = _split(params.leases, streams)
        split = _split(streams, procs)
        cfg = {
            "rate": rate,
            "warmup": params.warmup,
            "duration": params.duration,
            "channels": params.channels,
        }
        jobs: list[tuple[str, tuple[Any, ...]]] = []
        lt = light(target)
        at = 0
        for p in range(procs):
            jobs.append((f"{HERE}.lease_main", (lt, cfg, per_stream[at : at + split[p]])))
            at += split[p]
        total = params.warmup + params.duration
        results, win = run_procs(
            target, jobs, warmup=params.warmup, duration=params.duration, timeout=total + 120
        )
        lat = array("d")
        for r in results:
            lat.frombytes(r["lat"])
        ls = sorted(lat)
        figures: dict[str, float] = {
            "keepalives/s": sum(r["in_window"] for r in results) / params.duration,
            "offered/s": params.leases * rate,
            "p50 ms": percentile(ls, 50) * 1e3,
            "p90 ms": percentile(ls, 90) * 1e3,
            "p99 ms": percentile(ls, 99) * 1e3,
            "p99.9 ms": percentile(ls, 99.9) * 1e3,
            "max ms": (ls[-1] if ls else float("nan")) * 1e3,
            "client CPU": sum(r["cpu"] for r in results),
        }
        if win.server_cpu is not None:
            figures["server CPU"] = win.server_cpu
        if win.machine_cpu is not None:
            figures["machine CPU"] = win.machine_cpu
        if win.rss_peak:
            figures["server RSS MB"] = win.rss_peak / 1e6
        n = len(ls)
        cpus = [r["cpu"] for r in results]
        return {
            "target": target.name,
            "round": rnd,
            "figures": figures,
            "ops": n,
            "seconds": params.duration,
            "errors": sum(r["errors"] for r in results),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "counters": {
                "sent": sum(r["sent"] for r in results),
                "answers": sum(r["answers"] for r in results),
            },
            "client_cpu_per_proc": cpus,
            "client_saturated": max(cpus) >= 0.9,
            "machine_saturated": (win.machine_cpu or 0.0) >= 0.9 * (os.cpu_count() or 1),
            "latency_quantiles_ms": [
                ls[min(n - 1, round(i * (n - 1) / 200))] * 1e3 for i in range(201)
            ]
            if n
            else [],
        }
