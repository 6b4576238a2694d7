"""``watch-latency`` and ``watch-fanout``: watchers on one prefix, a writer putting at a fixed rate.

One run = one writer process + ``--procs`` watcher processes (spawned fresh). The watcher
processes open ``--streams`` bidirectional ``/etcdserverpb.Watch/Watch`` streams (grpcio asyncio,
spread over ``--channels`` HTTP/2 connections per process) and create ``--watchers`` watchers on a
prefix unique to the run, spread evenly over the streams; every watcher is created (its
``created`` response received) before the writer starts. The writer, on its own connection, puts
distinct keys under the prefix at a fixed rate (open loop: a Put is sent on schedule whether or
not the previous ones were answered) for ``warmup + duration`` seconds, and records the time each
Put's response arrived, by the revision in its header, into shared memory.

Per event: the delay from the Put's response (acknowledged) to the event's arrival at the
watcher, matched by the event's ``mod_revision`` (one clock: ``CLOCK_MONOTONIC`` is machine-wide,
see ``bench/streams.py``); delays of Puts sent in the recorded window only. An event that arrives
before its Put's response counts as 0 (and in ``early %``): both servers usually send the event
no later than the answer, so ``put p50/p99 ms`` (from the Put's request being sent, the write's
commit included) is also reported. ``events/s``: events received by all
watchers within the recorded window / its length. After the writer stops, watchers drain until
each has the last write (bounded, ``DRAIN_MAX``); ``drain s`` = last delivery - last Put ack.

Checked for every watcher: events in strictly ascending revision (``duplicated``: an event at or
below the last revision it had), count = Puts acknowledged (``lost``: the shortfall) and the last
revision = the writer's last. Any lost or duplicated event is an error (the run fails).

Responses arrive as bytes and are parsed with upb (``WatchResponse.FromString``); the per-event
work in the hot loop is O(1) per response when the response's revisions are consecutive (always,
when only the writer writes): count, first and last revision. Delays are computed after the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from typing import Any, ClassVar

import grpc
import grpc.aio

from bench.client import Kv, prefix_end
from bench.proto import rpc_pb2
from bench.streams import CpuWindow, Hist, grpc_options, light, run_procs, wait_barrier
from bench.targets import Target
from bench.workloads.base import Params, Workload, random_values

WATCH = "/etcdserverpb.Watch/Watch"
DRAIN_MAX = 60.0  # seconds after the last write for every watcher to get everything
HERE = "bench.workloads.watch"


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _channel(target: Target, tag: str) -> grpc.aio.Channel:
    opts = grpc_options(tag)
    if target.tls.enabled:
        return grpc.aio.secure_channel(target.endpoint, target.tls.credentials(), opts)
    return grpc.aio.insecure_channel(target.endpoint, opts)


# -- the writer process ----------------------------------------------------------------------


async def writer_main(
    target: Target, cfg: dict[str, Any], barrier: Any, shared: dict[str, Any]
) -> dict[str, Any]:
    prefix: bytes = cfg["prefix"]
    kv = Kv(target, channels=1)
    try:
        req = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        base = (await kv.range(req)).header.revision
        shared["base"].value = base
        values = random_values(16, cfg["value_size"])
        ack, sent, nslots = shared["ack"], shared["sent"], cfg["nslots"]
        await wait_barrier(barrier)
        t0 = time.monotonic()
        rec_start = t0 + cfg["warmup"]
        end = rec_start + cfg["duration"]
        shared["rec_start"].value = rec_start
        cpu = CpuWindow(rec_start, end)
        interval = 1.0 / cfg["rate"]
        st = {"acked": 0, "errors": 0, "last": 0, "last_ack": 0.0, "late": 0, "unmatched": 0}
        first_error: list[str] = []

        async def put(i: int, due: float) -> None:
            due = time.monotonic()  # sent (the schedule decides the window; this is when)
            try:
                resp = await kv.put(
                    rpc_pb2.PutRequest(key=prefix + b"%08d" % i, value=values[i % 16])
                )
            except grpc.aio.AioRpcError as exc:
                st["errors"] += 1
                if not first_error:
                    first_error.append(f"Put: {exc.code().name}: {exc.details()}")
                return
            t = time.monotonic()
            rev = resp.header.revision
            idx = rev - base
            if 0 <= idx < nslots:
                ack[idx] = t
                sent[idx] = due
            else:
                st["unmatched"] += 1
            st["acked"] += 1
            st["last"] = max(st["last"], rev)
            st["last_ack"] = max(st["last_ack"], t)

        tasks = []
        for i in range(cfg["max_writes"]):
            due = t0 + i * interval
            if due >= end:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.01:
                st["late"] += 1  # the writer itself could not keep the schedule
            tasks.append(asyncio.ensure_future(put(i, due)))
        await asyncio.gather(*tasks)
        shared["last"].value = st["last"]
        shared["last_ack"].value = st["last_ack"]
        shared["done"].value = 1
        return {
            **st,
            "writes": len(tasks),
            "cpu": await cpu.result(),
            "first_error": first_error[0] if first_error else None,
            "rec_start": rec_start,
            "rec_end": end,
        }
    finally:
        await kv.close()


# -- a watcher process -----------------------------------------------------------------------


async def watcher_main(
    target: Target,
    cfg: dict[str, Any],
    proc: int,
    per_stream: list[int],
    barrier: Any,
    shared: dict[str, Any],
) -> dict[str, Any]:
    prefix: bytes = cfg["prefix"]
    nch = max(1, min(cfg["channels"], len(per_stream)))
    channels = [_channel(target, f"{os.getpid()}-w{i}") for i in range(nch)]
    create = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
    ).SerializeToString()
    parse = rpc_pb2.WatchResponse.FromString
    nwatchers = sum(per_stream)
    counts = [0] * nwatchers
    lasts = [0] * nwatchers
    rec_t = array("d")
    rec_first = array("q")
    rec_last = array("q")
    st = {"dup": 0, "unknown": 0, "responses": 0, "in_window": 0, "last_t": 0.0}
    try:

        async def open_stream(si: int, n: int, first_slot: int) -> tuple[Any, dict[int, int]]:
            call = channels[si % nch].stream_stream(WATCH)()
            for _ in range(n):
                await call.write(create)
            ids: dict[int, int] = {}
            while len(ids) < n:
                data = await call.read()
                if data is grpc.aio.EOF:
                    raise RuntimeError("watch stream ended during set-up")
                r = parse(data)
                if r.created:
                    if r.canceled:
                        raise RuntimeError(f"watch refused: {r.cancel_reason!r}")
                    ids[r.watch_id] = first_slot + len(ids)
            return call, ids

        firsts = [sum(per_stream[:i]) for i in range(len(per_stream))]
        opened = await asyncio.gather(
            *(open_stream(i, n, firsts[i]) for i, n in enumerate(per_stream))
        )
        await wait_barrier(barrier)
        t0 = time.monotonic()
        rec_start = t0 + cfg["warmup"]
        rec_end = rec_start + cfg["duration"]
        cpu = CpuWindow(rec_start, rec_end)

        async def reader(call: Any, ids: dict[int, int]) -> None:
            read = call.read
            mono = time.monotonic
            eof = grpc.aio.EOF
            while True:
                data = await read()
                if data is eof:
                    return
                t = mono()
                r = parse(data)
                evs = r.events
                n = len(evs)
                if not n:
                    continue
                st["responses"] += 1
                slot = ids.get(r.watch_id)
                if slot is None:
                    st["unknown"] += n
                    continue
                first = evs[0].kv.mod_revision
                last = evs[-1].kv.mod_revision
                prev = lasts[slot]
                if first <= prev or last - first + 1 != n:  # slow path: event by event
                    good = 0
                    for e in evs:
                        rv = e.kv.mod_revision
                        if rv <= prev:
                            st["dup"] += 1
                        else:
                            prev = rv
                            good += 1
                    n, last = good, prev
                    if not n:
                        continue
                    first = max(first, lasts[slot] + 1)
                counts[slot] += n
                lasts[slot] = last
                rec_t.append(t)
                rec_first.append(first)
                rec_last.append(last)
                if rec_start <= t < rec_end:
                    st["in_window"] += n
                st["last_t"] = t

        readers = [asyncio.ensure_future(reader(c, ids)) for c, ids in opened]
        while not shared["done"].value:  # noqa: ASYNC110 (another process sets it)
            await asyncio.sleep(0.05)
        final = shared["last"].value
        deadline = time.monotonic() + cfg["drain"]
        while time.monotonic() < deadline and min(lasts, default=final) < final:
            if all(r.done() for r in readers):
                break
            await asyncio.sleep(0.02)
        for c, _ in opened:
            c.cancel()
        for r in readers:
            try:
                await r
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
        client_cpu = await cpu.result()

        # Delays, after the run: per event, arrival - its Put's ack (Puts sent in the window).
        base = shared["base"].value
        w_start = shared["rec_start"].value
        ack = shared["ack"][:]
        sent = shared["sent"][:]
        nslots = len(ack)
        hist = Hist()  # from the Put's answer
        hist_sent = Hist()  # from the Put's request
        early = 0
        for t, f, lst in zip(rec_t, rec_first, rec_last, strict=True):
            for i in range(max(0, f - base), min(nslots, lst - base + 1)):
                if sent[i] < w_start or not ack[i]:
                    continue  # not ours, or sent during the warm-up
                hist_sent.add(t - sent[i])
                d = t - ack[i]
                if d < 0:
                    early += 1
                    d = 0.0
                hist.add(d)
        return {
            "hist": hist.to_dict(),
            "hist_sent": hist_sent.to_dict(),
            "early": early,
            "counts": counts,
            "lasts": lasts,
            "cpu": client_cpu,
            **st,
        }
    finally:
        for ch in channels:
            await ch.close()


# -- the workloads ---------------------------------------------------------------------------


class _Watch(Workload):
    stream = True
    default_rate: ClassVar[float] = 200.0
    default_watchers: ClassVar[tuple[int, ...]] = (1,)
    default_streams: ClassVar[tuple[int, ...]] = (1,)
    default_value_size = 256
    rate_label = "events/s"

    def levels(self, args: Any) -> list[dict[str, Any]]:
        ws = args.watchers or self.default_watchers
        ss = args.streams or self.default_streams
        if len(ws) != len(ss) and 1 not in (len(ws), len(ss)):
            raise SystemExit(
                "--watchers and --streams: give as many values each (paired), or one for either"
            )
        n = max(len(ws), len(ss))
        ws, ss = (ws * n if len(ws) == 1 else ws), (ss * n if len(ss) == 1 else ss)
        out = []
        for w, s in zip(ws, ss, strict=True):
            if s > w:
                raise SystemExit(f"--streams {s} > --watchers {w}")
            out.append(
                {"watchers": w, "streams": s, "clients": w, "label": f"watchers={w} streams={s}"}
            )
        return out

    def run_round(self, target: Target, params: Params, rnd: int) -> dict[str, Any]:
        rate = params.rate or self.default_rate
        total = params.warmup + params.duration
        max_writes = max(1, min(params.max_ops, int(total * rate) + 1))
        streams = max(1, params.streams)
        procs = max(1, min(params.procs, streams))
        prefix = b"/registry/pods/bench-watch-%d-%s/" % (
            params.run_tag,
            os.urandom(4).hex().encode(),
        )
        cfg = {
            "prefix": prefix,
            "value_size": params.value_size,
            "rate": rate,
            "warmup": params.warmup,
            "duration": params.duration,
            "max_writes": max_writes,
            "nslots": max_writes + 64,
            "channels": params.channels,
            "drain": DRAIN_MAX,
        }
        per_stream = _split(params.watchers, streams)
        stream_split = _split(streams, procs)
        lt = light(target)
        jobs: list[tuple[str, tuple[Any, ...]]] = [(f"{HERE}.writer_main", (lt, cfg))]
        at = 0
        for p in range(procs):
            jobs.append(
                (f"{HERE}.watcher_main", (lt, cfg, p, per_stream[at : at + stream_split[p]]))
            )
            at += stream_split[p]

        def make_shared(ctx: Any) -> dict[str, Any]:
            return {
                "base": ctx.Value("q", 0, lock=False),
                "last": ctx.Value("q", 0, lock=False),
                "last_ack": ctx.Value("d", 0.0, lock=False),
                "done": ctx.Value("i", 0, lock=False),
                "rec_start": ctx.Value("d", 0.0, lock=False),
                "ack": ctx.Array("d", cfg["nslots"], lock=False),
                "sent": ctx.Array("d", cfg["nslots"], lock=False),
            }

        results, win = run_procs(
            target,
            jobs,
            warmup=params.warmup,
            duration=params.duration,
            timeout=DRAIN_MAX + total + 120,
            make_shared=make_shared,
        )
        writer, watchers = results[0], results[1:]
        hist, hist_sent = Hist(), Hist()
        for w in watchers:
            hist.merge(w["hist"])
            hist_sent.merge(w["hist_sent"])
        acked = writer["acked"]
        lost = sum(max(0, acked - c) for w in watchers for c in w["counts"])
        behind = sum(1 for w in watchers for x in w["lasts"] if x < writer["last"])
        dup = sum(w["dup"] + w["unknown"] for w in watchers)
        delivered = sum(sum(w["counts"]) for w in watchers)
        responses = sum(w["responses"] for w in watchers)
        last_t = max(w["last_t"] for w in watchers)
        figures: dict[str, float] = {
            "events/s": sum(w["in_window"] for w in watchers) / params.duration,
            "offered events/s": rate * params.watchers,
            "p50 ms": hist.quantile(0.50) * 1e3,
            "p90 ms": hist.quantile(0.90) * 1e3,
            "p99 ms": hist.quantile(0.99) * 1e3,
            "p99.9 ms": hist.quantile(0.999) * 1e3,
            "max ms": hist.max * 1e3,
            "put p50 ms": hist_sent.quantile(0.50) * 1e3,
            "put p99 ms": hist_sent.quantile(0.99) * 1e3,
            "lost": float(lost),
            "duplicated": float(dup),
            "early %": 100.0 * sum(w["early"] for w in watchers) / max(1, hist.count),
            "events/response": delivered / max(1, responses),
            "drain s": max(0.0, last_t - writer["last_ack"]),
            "writes/s": writer["acked"] / total,
            "client CPU": writer["cpu"] + sum(w["cpu"] for w in watchers),
        }
        if win.rss_peak:
            figures["server RSS MB"] = win.rss_peak / 1e6
        if win.server_cpu is not None:
            figures["server CPU"] = win.server_cpu
        if win.machine_cpu is not None:
            figures["machine CPU"] = win.machine_cpu
        errors = writer["errors"] + (1 if lost or dup or behind else 0)
        first_error = writer["first_error"]
        if not first_error and (lost or dup or behind):
            first_error = (
                f"{lost} events lost, {dup} duplicated/out of order, {behind} "
                f"watchers short of the last revision {writer['last']} "
                f"(drain limit {DRAIN_MAX:.0f} s)"
            )
        if writer["late"]:
            figures["writer late"] = float(writer["late"])
        cpus = [writer["cpu"], *(w["cpu"] for w in watchers)]
        return {
            "target": target.name,
            "round": rnd,
            "figures": figures,
            "ops": hist.count,
            "seconds": params.duration,
            "errors": errors,
            "first_error": first_error,
            "counters": {
                "writes": writer["writes"],
                "acked": acked,
                "delivered": delivered,
                "responses": responses,
                "delay_samples": hist.count,
            },
            "client_cpu_per_proc": cpus,
            "client_saturated": max(cpus) >= 0.9,
            "machine_saturated": (win.machine_cpu or 0.0) >= 0.9 * (os.cpu_count() or 1),
            "latency_quantiles_ms": hist.quantiles_ms(),
        }


class WatchLatency(_Watch):
    name = "watch-latency"
    summary = "1 watcher on a prefix, writer at a fixed rate: put-ack to event delay"
    default_rate = 200.0
    figures = (
        "events/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "early %",
        "put p50 ms",
        "put p99 ms",
        "lost",
        "duplicated",
    )


class WatchFanout(_Watch):
    name = "watch-fanout"
    summary = "1,000-10,000 watchers over 10-100 streams on one prefix"
    default_rate = 100.0
    default_watchers = (1000, 10000)
    default_streams = (10, 100)
    default_procs = 2
    figures = (
        "events/s",
        "p50 ms",
        "p99 ms",
        "put p99 ms",
        "server RSS MB",
        "events/response",
        "drain s",
        "lost",
        "duplicated",
    )
