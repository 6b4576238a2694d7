"""Figures from runs: medians with min-max, the etcdgw/etcd ratio, the table, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.runner import SATURATED_CPU, RunResult
from bench.workloads.base import Workload

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Always recorded; shown after the workload's own figures.
CPU_FIGURES = ("client CPU", "server CPU", "machine CPU")
QUANTILE_POINTS = 201  # latency quantiles kept per run for the CDF plot


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def run_figures(wl: Workload, run: RunResult) -> dict[str, Any]:
    """A run's figures (latencies in ms, CPU in cores) plus its raw facts."""
    lat = run.latencies
    figures: dict[str, float] = {
        wl.rate_label: run.ops / run.seconds,
        "p50 ms": percentile(lat, 50) * 1e3,
        "p90 ms": percentile(lat, 90) * 1e3,
        "p99 ms": percentile(lat, 99) * 1e3,
        "p99.9 ms": percentile(lat, 99.9) * 1e3,
        "max ms": (lat[-1] if lat else float("nan")) * 1e3,
        **wl.extra_figures(run.ops, run.seconds, run.nbytes, run.counters),
        "client CPU": sum(run.client_cpu),
    }
    if run.server_cpu is not None:
        figures["server CPU"] = run.server_cpu
    if run.machine_cpu is not None:
        figures["machine CPU"] = run.machine_cpu
    n = len(lat)
    quantiles = (
        [
            lat[min(n - 1, round(i * (n - 1) / (QUANTILE_POINTS - 1)))] * 1e3
            for i in range(QUANTILE_POINTS)
        ]
        if n
        else []
    )
    return {
        "target": run.target,
        "round": run.round,
        "figures": figures,
        "ops": run.ops,
        "seconds": run.seconds,
        "bytes": run.nbytes,
        "errors": run.errors,
        "first_error": run.first_error,
        "counters": run.counters,
        "client_cpu_per_proc": run.client_cpu,
        "client_saturated": max(run.client_cpu, default=0.0) >= SATURATED_CPU,
        # Every core busy (client + server + whoever else shares the machine): the figures are
        # then bounded by the machine, and a client's CPU share understates its demand.
        "machine_saturated": (run.machine_cpu or 0.0) >= SATURATED_CPU * (os.cpu_count() or 1),
        "latency_quantiles_ms": quantiles,
    }


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per target, per figure: median, min, max over the rounds."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [r["figures"] for r in runs if r["target"] == name]
        keys = dict.fromkeys(k for f in mine for k in f)
        out[name] = {}
        for k in keys:
            values = [f[k] for f in mine if k in f and f[k] == f[k]]  # drop NaN
            if values:
                out[name][k] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
    return out


def ratio_pair(names: list[str]) -> tuple[str, str] | None:
    """etcdgw/etcd when both are there; else first/second of exactly two targets."""
    if "etcdgw" in names and "etcd" in names:
        return "etcdgw", "etcd"
    if len(names) == 2:
        return names[0], names[1]
    return None


def ratios(medians: dict[str, dict[str, Any]], pair: tuple[str, str] | None) -> dict[str, float]:
    if pair is None:
        return {}
    a, b = medians.get(pair[0], {}), medians.get(pair[1], {})
    return {k: a[k]["median"] / b[k]["median"] for k in a if k in b and b[k]["median"]}


def fmt(x: float) -> str:
    if x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(
    wl: Workload, group: dict[str, Any], names: list[str], pair: tuple[str, str] | None
) -> str:
    """The stdout table of one clients level."""
    label = group.get("label") or f"clients={group['clients']}"
    header = f"{wl.name}  {label}  ({len(group['runs']) // len(names)} rounds)"
    shown = [*wl.figures, *(() if wl.custom and not wl.stream else CPU_FIGURES)]
    cols = [*names, f"{pair[0]}/{pair[1]}" if pair else ""]
    rows = [["figure", *cols]]
    for k in shown:
        cells = []
        for n in names:
            m = group["medians"].get(n, {}).get(k)
            cells.append(f"{fmt(m['median'])} [{fmt(m['min'])}-{fmt(m['max'])}]" if m else "-")
        r = group["ratios"].get(k)
        rows.append([k, *cells, f"{r:.2f}" if r is not None else ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header] + [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for n in names:
        sat = [r for r in group["runs"] if r["target"] == n and r["client_saturated"]]
        if sat:
            worst = max(max(r["client_cpu_per_proc"]) for r in sat)
            lines.append(
                f"  ! client-saturated against {n} in {len(sat)} run(s) "
                f"({worst:.2f} cores in one client process): add --procs"
            )
        busy = [r for r in group["runs"] if r["target"] == n and r.get("machine_saturated")]
        if busy:
            lines.append(
                f"  ! machine-saturated (all {os.cpu_count()} cores busy) in {len(busy)} run(s) "
                f"against {n}: client and server competed for CPU"
            )
        errs = [r for r in group["runs"] if r["target"] == n and r["errors"]]
        if errs:
            total = sum(r["errors"] for r in errs)
            lines.append(f"  ! {total} errors against {n}, first: {errs[0]['first_error']}")
    return "\n".join(lines)


def _run(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def machine_facts(etcd_bin: str = "etcd") -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    etcd_version = _run([etcd_bin, "--version"])
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "diff", "--name-only", "HEAD"])
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    import grpc
    from google.protobuf.internal import api_implementation

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "protobuf_impl": api_implementation.Type(),
        "etcd_version": etcd_version.splitlines()[0].split(":")[-1].strip()
        if etcd_version
        else None,
        "git_commit": commit,
        # The servers run from the work tree: uncommitted changes are part of what was measured.
        "git_dirty": bool(dirty),
        "git_dirty_paths": (dirty or "").splitlines(),
        "loadavg_at_start": list(load),
    }


def write_json(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = out_dir / f"{result['workload']}-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{result['workload']}-{stamp}-{n}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return path
