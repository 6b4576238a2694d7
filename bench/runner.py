"""Timed runs: client processes, warm-up, the measured window, and what comes back from it.

One run = ``procs`` client processes (spawned fresh, so no grpc state crosses a fork), each with
``clients/procs`` concurrent clients over ``channels`` HTTP/2 connections. All processes connect and
run ``setup_proc`` first, meet at a barrier, run ``warmup`` seconds unrecorded, then record for
``duration`` seconds or until ``max_ops`` operations (split between clients) are done.

Each process measures its own CPU time (all its threads: asyncio loop plus grpc's C-core pollers)
over the recorded window; at ~100 % of a core it was the bottleneck ("client-saturated"). Process 0
also samples the server's CPU from /proc when the bench started the server.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from bench.client import Kv
from bench.targets import Target, proc_cpu_seconds
from bench.workloads import get_workload
from bench.workloads.base import Ctx, Params, State

#: Client CPU (cores, per process) at which the load generator counts as the bottleneck.
SATURATED_CPU = 0.9
MAX_ERRORS = 100


@dataclass
class RunResult:
    target: str
    round: int
    ops: int
    seconds: float
    nbytes: int
    errors: int
    first_error: str | None
    latencies: list[float]  # seconds, sorted
    client_cpu: list[float]  # cores, per client process
    server_cpu: float | None  # cores, when known
    machine_cpu: float | None  # cores busy on the whole machine (client, server and the rest)
    counters: dict[str, int] = field(default_factory=dict)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _proc_main(
    target: Target,
    workload: str,
    params: Params,
    state: State,
    proc: int,
    nworkers: int,
    first_worker: int,
    barrier: Any,
    server_pid: int | None,
) -> dict[str, Any]:
    wl = get_workload(workload)
    kv = Kv(target, channels=min(params.channels, nworkers))
    try:
        pstate = await wl.setup_proc(kv, params, state)
        ctxs = [Ctx(proc=proc, worker=first_worker + i) for i in range(nworkers)]
        ops = [wl.make_op(kv, params, pstate, c) for c in ctxs]
        await asyncio.to_thread(barrier.wait, 120)
        t0 = time.monotonic()
        rec_start = t0 + params.warmup
        end = rec_start + params.duration
        quota = -(-params.max_ops // max(1, params.clients))
        lat = array("d")
        totals = {"ops": 0, "bytes": 0, "errors": 0, "last": rec_start}
        first_error: list[str] = []
        marks: dict[str, float] = {}

        async def sample_start() -> None:
            await asyncio.sleep(max(0.0, rec_start - time.monotonic()))
            marks["cpu0"] = time.process_time()
            marks["wall0"] = time.monotonic()
            if server_pid is not None:
                marks["srv0"] = proc_cpu_seconds(server_pid) or 0.0
            if proc == 0:
                marks["busy0"], marks["total0"] = machine_cpu()

        async def client(op: Any) -> None:
            done = 0
            while done < quota:
                s = time.monotonic()
                if s >= end:
                    return
                try:
                    n = await op()
                except grpc.aio.AioRpcError as exc:
                    totals["errors"] += 1
                    if not first_error:
                        first_error.append(f"{exc.code().name}: {exc.details()}")
                    if totals["errors"] >= MAX_ERRORS:
                        return
                    await asyncio.sleep(0.01)
                    continue
                e = time.monotonic()
                if s >= rec_start:
                    lat.append(e - s)
                    totals["ops"] += 1
                    totals["bytes"] += n
                    totals["last"] = max(totals["last"], e)
                    done += 1

        sampler = asyncio.ensure_future(sample_start())
        await asyncio.gather(*(client(op) for op in ops))
        await sampler
        wall = time.monotonic() - marks["wall0"]
        server_cpu = machine = None
        if proc == 0:
            busy, total = machine_cpu()
            machine = (busy - marks["busy0"]) / max(total - marks["total0"], 1e-9) * cpu_count()
        if server_pid is not None:
            server_cpu = ((proc_cpu_seconds(server_pid) or 0.0) - marks["srv0"]) / max(wall, 1e-9)
        return {
            "ops": totals["ops"],
            "bytes": totals["bytes"],
            "errors": totals["errors"],
            "first_error": first_error[0] if first_error else None,
            "lat": lat.tobytes(),
            "rec_start": rec_start,
            "last": totals["last"],
            "cpu": (time.process_time() - marks["cpu0"]) / max(wall, 1e-9),
            "server_cpu": server_cpu,
            "machine_cpu": machine,
            "attempts": sum(c.attempts for c in ctxs),
            "conflicts": sum(c.conflicts for c in ctxs),
        }
    finally:
        await kv.close()


def _proc_entry(out: Any, *args: Any) -> None:
    try:
        out.put(asyncio.run(_proc_main(*args)))
    except BaseException as exc:  # reported by the parent, which fails the run
        out.put({"crash": f"{type(exc).__name__}: {exc}"})


def run_once(target: Target, workload: str, params: Params, state: State, rnd: int) -> RunResult:
    """One timed run of ``workload`` against ``target``."""
    ctx = mp.get_context("spawn")
    procs = max(1, min(params.procs, params.clients))
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    light = Target(name=target.name, endpoint=target.endpoint, tls=target.tls)
    workers = _split(params.clients, procs)
    children = []
    for i in range(procs):
        args = (
            light,
            workload,
            params,
            state,
            i,
            workers[i],
            sum(workers[:i]),
            barrier,
            target.pid if i == 0 else None,
        )
        child = ctx.Process(target=_proc_entry, args=(out, *args), daemon=True)
        child.start()
        children.append(child)
    deadline = time.monotonic() + params.warmup + params.duration + 180
    parts: list[dict[str, Any]] = []
    try:
        while len(parts) < procs:
            try:
                parts.append(out.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline or not any(c.is_alive() for c in children):
                    if out.empty():
                        raise RuntimeError(
                            f"client processes for {target.name} died or hung"
                        ) from None
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    crashes = [p["crash"] for p in parts if "crash" in p]
    if crashes:
        raise RuntimeError(f"client process failed against {target.name}: {crashes[0]}")
    lat = array("d")
    for p in parts:
        lat.frombytes(p["lat"])
    start = min(p["rec_start"] for p in parts)
    last = max(p["last"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    return RunResult(
        target=target.name,
        round=rnd,
        ops=sum(p["ops"] for p in parts),
        seconds=max(last - start, 1e-9),
        nbytes=sum(p["bytes"] for p in parts),
        errors=errors,
        first_error=next((p["first_error"] for p in parts if p["first_error"]), None),
        latencies=sorted(lat),
        client_cpu=[p["cpu"] for p in parts],
        server_cpu=next((p["server_cpu"] for p in parts if p["server_cpu"] is not None), None),
        machine_cpu=next((p["machine_cpu"] for p in parts if p["machine_cpu"] is not None), None),
        counters={
            "attempts": sum(p["attempts"] for p in parts),
            "conflicts": sum(p["conflicts"] for p in parts),
        },
    )


def prepare(target: Target, workload: str, params: Params) -> tuple[State, str | None]:
    """Load the workload's keys into ``target``; returns its state and the server's version."""

    async def go() -> tuple[State, str | None]:
        kv = Kv(target, channels=2)
        try:
            version = await kv.version()
            return await get_workload(workload).prepare(kv, params), version
        finally:
            await kv.close()

    return asyncio.run(go())


def server_version(target: Target) -> str | None:
    async def go() -> str | None:
        kv = Kv(target, channels=1)
        try:
            return await kv.version()
        finally:
            await kv.close()

    return asyncio.run(go())


def cpu_count() -> int:
    return os.cpu_count() or 1


def machine_cpu() -> tuple[float, float]:
    """``(busy, total)`` jiffies of all CPUs from /proc/stat (busy: not idle, not iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    total = sum(fields)
    return total - fields[3] - fields[4], total
