"""Runs of the streaming workloads (watch-latency, watch-fanout, lease-keepalive).

They do not fit the ops loop of ``runner.py`` (a closed loop of unary calls): a writer at a fixed
rate and readers on long-lived bidirectional streams, or keepalives on a schedule. Each run spawns
its client processes fresh (``spawn``: no grpc state crosses a fork); every process does its
set-up (streams opened, watchers created, leases granted), then all of them and the parent meet at
a barrier; the recorded window is ``warmup`` seconds after it and lasts ``duration`` seconds.

Clock: every timestamp is ``time.monotonic()``, which on Linux is ``CLOCK_MONOTONIC``, one clock
for every process of the machine, so a Put acknowledged in the writer process and the event that
arrives in a watcher process are compared directly (no synchronisation to do).

The parent samples the server (CPU over the window, peak RSS during the whole run, when the bench
started it) and the machine (/proc/stat) and turns what the processes return into figures.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.targets import Target, proc_cpu_seconds

#: Delay histogram: buckets 1 % wide from 1 us (percentiles exact to 1 %; max exact).
_BASE = 1e-6
_STEP = math.log(1.01)


class Hist:
    """A mergeable latency histogram (seconds), log buckets 1 % wide; the max is exact."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float, n: int = 1) -> None:
        b = 0 if seconds <= _BASE else int(math.log(seconds / _BASE) / _STEP) + 1
        self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += n
        self.total += seconds * n
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Hist | dict[str, Any]) -> None:
        if isinstance(other, dict):
            o = Hist.from_dict(other)
        else:
            o = other
        for b, n in o.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += o.count
        self.total += o.total
        self.max = max(self.max, o.max)

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "count": self.count, "max": self.max, "total": self.total}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Hist:
        h = Hist()
        h.buckets = {int(k): v for k, v in d["buckets"].items()}
        h.count, h.max, h.total = d["count"], d["max"], d["total"]
        return h

    @staticmethod
    def _upper(b: int) -> float:
        return _BASE if b == 0 else _BASE * math.exp(b * _STEP)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (q in 0..1), the upper edge of its bucket (capped at max)."""
        if not self.count:
            return float("nan")
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return min(self._upper(b), self.max)
        return self.max

    def quantiles_ms(self, points: int = 201) -> list[float]:
        return [self.quantile(i / (points - 1)) * 1e3 for i in range(points)] if self.count else []


# -- client processes ------------------------------------------------------------------------


def _entry(out: Any, index: int, func: str, args: tuple[Any, ...]) -> None:
    mod, _, name = func.rpartition(".")
    try:
        fn = getattr(importlib.import_module(mod), name)
        out.put((index, asyncio.run(fn(*args))))
    except BaseException as exc:  # reported by the parent, which fails the run
        import traceback

        out.put((index, {"crash": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}))


class Window:
    """What the parent measured around the recorded window."""

    def __init__(self) -> None:
        self.server_cpu: float | None = None
        self.machine_cpu: float | None = None
        self.rss_peak: int | None = None
        self.rss_end: int | None = None


def run_procs(
    target: Target,
    jobs: list[tuple[str, tuple[Any, ...]]],
    *,
    warmup: float,
    duration: float,
    timeout: float,
    make_shared: Callable[[Any], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], Window]:
    """Spawn one process per job: ``(module.function, args)``; the coroutine function gets
    ``(*args, barrier, shared)`` and must call ``barrier.wait`` once set up (the parent is the
    last party). Returns each job's result (in job order) and the parent's measurements."""
    from bench.runner import cpu_count, machine_cpu  # (runner imports the workloads)

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs) + 1)
    shared = make_shared(ctx) if make_shared else {}
    out = ctx.Queue()
    children = []
    for i, (func, args) in enumerate(jobs):
        child = ctx.Process(
            target=_entry, args=(out, i, func, (*args, barrier, shared)), daemon=True
        )
        child.start()
        children.append(child)
    win = Window()
    results: dict[int, dict[str, Any]] = {}
    stop = threading.Event()
    rss: list[int] = []

    def sample_rss() -> None:
        while not stop.is_set():
            r = target.rss_bytes()
            if r:
                rss.append(r)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample_rss, daemon=True) if target.pid else None
    if sampler:
        sampler.start()
    try:
        deadline = time.monotonic() + 180
        while barrier.n_waiting < len(jobs):  # set-up; a child that dies fails the run
            time.sleep(0.05)
            _collect(out, results)
            crashed = [r["crash"] for r in results.values() if "crash" in r]
            if crashed:
                raise RuntimeError(f"client process failed against {target.name}: {crashed[0]}")
            if time.monotonic() > deadline or not all(c.is_alive() for c in children):
                raise RuntimeError(f"client processes for {target.name} died or hung during set-up")
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        time.sleep(max(0.0, t0 + warmup - time.monotonic()))
        srv0 = proc_cpu_seconds(target.pid) if target.pid else None
        busy0, total0 = machine_cpu()
        w0 = time.monotonic()
        time.sleep(max(0.0, t0 + warmup + duration - time.monotonic()))
        wall = time.monotonic() - w0
        busy1, total1 = machine_cpu()
        if srv0 is not None and target.pid:
            win.server_cpu = ((proc_cpu_seconds(target.pid) or 0.0) - srv0) / max(wall, 1e-9)
        if total1 > total0:
            win.machine_cpu = (busy1 - busy0) / (total1 - total0) * cpu_count()
        end = time.monotonic() + timeout
        while len(results) < len(jobs):
            try:
                _collect(out, results, block=True)
            except queue.Empty:
                if time.monotonic() > end or not any(c.is_alive() for c in children):
                    _collect(out, results)
                    if len(results) < len(jobs):
                        raise RuntimeError(
                            f"client processes for {target.name} died or hung"
                        ) from None
            crashed = [r["crash"] for r in results.values() if "crash" in r]
            if crashed:
                raise RuntimeError(f"client process failed against {target.name}: {crashed[0]}")
    finally:
        stop.set()
        if sampler:
            sampler.join(timeout=2)
        if target.pid:
            win.rss_end = target.rss_bytes()
        win.rss_peak = max(rss) if rss else None
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    return [results[i] for i in range(len(jobs))], win


def _collect(out: Any, results: dict[int, dict[str, Any]], block: bool = False) -> None:
    if block:
        i, r = out.get(timeout=1.0)
        results[i] = r
    while True:
        try:
            i, r = out.get_nowait()
        except queue.Empty:
            return
        results[i] = r


class CpuWindow:
    """A client process's CPU time (all threads) over the recorded window, sampled by a task."""

    def __init__(self, rec_start: float, rec_end: float) -> None:
        self.cores: float = 0.0
        self._task = asyncio.ensure_future(self._run(rec_start, rec_end))

    async def _run(self, rec_start: float, rec_end: float) -> None:
        await asyncio.sleep(max(0.0, rec_start - time.monotonic()))
        c0, w0 = time.process_time(), time.monotonic()
        await asyncio.sleep(max(0.0, rec_end - time.monotonic()))
        self.cores = (time.process_time() - c0) / max(time.monotonic() - w0, 1e-9)

    async def result(self) -> float:
        if not self._task.done():
            await self._task
        return self.cores


async def wait_barrier(barrier: Any) -> None:
    await asyncio.to_thread(barrier.wait, 180)


def light(target: Target) -> Target:
    """What a client process needs of a target (a started one holds its Popen: unpicklable)."""
    return Target(name=target.name, endpoint=target.endpoint, tls=target.tls)


def grpc_options(tag: str) -> list[tuple[str, Any]]:
    from bench.client import _OPTIONS

    return [*_OPTIONS, ("bench.channel", tag)]
