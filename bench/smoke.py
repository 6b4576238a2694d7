"""``python -m bench smoke``: every implemented workload, ~1 s each, tiny sizes, exit 1 on error.

Starts its own servers (``--start``, default etcdgw and etcd), runs each workload for one round
through the same code path as a real measurement (client processes, JSON written to a temporary
directory) and fails on any error: a crash, an RPC error, or a workload that did no operations.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.cli import run_workload
from bench.workloads import WORKLOADS

#: Tiny sizes per workload (keys, clients).
SIZES: dict[str, tuple[str, str]] = {
    "range-get": ("1", "1,4"),
    "range-list": ("50", "1,2"),
    "range-list-paged": ("120", "2"),
    "put": ("0", "1,4"),
    "txn-update": ("20", "4"),
    "memory": ("500", "4"),
}
#: Streaming workloads: their own tiny sizes (a lost or duplicated event fails the run).
STREAM_ARGS: dict[str, list[str]] = {
    "watch-latency": ["--rate", "200"],
    "watch-fanout": ["--watchers", "40", "--streams", "4", "--procs", "2", "--rate", "50"],
    "lease-keepalive": ["--leases", "50", "--streams", "4"],
}


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench smoke")
    p.add_argument("--start", action="append", choices=("etcdgw", "etcd"),
                   help="servers to start (default: etcdgw and etcd)")  # fmt: skip
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--only", action="append", help="run only these workloads")
    args = p.parse_args(argv)
    starts = args.start or ["etcdgw", "etcd"]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
        for name, wl in WORKLOADS.items():
            if args.only and name not in args.only:
                continue
            if not wl.implemented:
                rc = run_workload([name, "--start", "etcd"])
                if rc != 2:
                    failures.append(f"{name}: pending workload exited {rc}, expected 2")
                continue
            cmd = [name, *(a for s in starts for a in ("--start", s))]
            cmd += ["--rounds", "1", "--duration", str(args.duration), "--warmup", "0.2"]
            if wl.stream:
                cmd += STREAM_ARGS[name]
            else:
                keys, clients = SIZES[name]
                cmd += ["--clients", clients, "--keys", keys, "--page-size", "50"]
            cmd += ["--out", tmp, "--progress", "no"]
            print(f"--- smoke: python -m bench {' '.join(cmd)}", flush=True)
            t0 = time.monotonic()
            try:
                rc = run_workload(cmd)
            except Exception as exc:  # any failure is the finding
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if rc != 0:
                failures.append(f"{name}: exited {rc}")
                continue
            files = sorted(Path(tmp).glob(f"{name}-*.json"))
            if not files:
                failures.append(f"{name}: no JSON result written")
                continue
            result = json.loads(files[-1].read_text())
            for g in result["results"]:
                for r in g["runs"]:
                    if not wl.custom and r.get("ops", 0) <= 0:
                        failures.append(f"{name} c={g['clients']} {r['target']}: no operations")
            print(f"--- smoke: {name} ok in {time.monotonic() - t0:.1f} s", flush=True)
    if failures:
        print("SMOKE FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("smoke: all workloads ok")
    return 0
