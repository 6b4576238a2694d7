"""`python -m bench smoke`: every bench workload runs end to end (tiny sizes, ~1 s each)
against etcdgw and real etcd started by the bench itself. Figures are never asserted here;
the smoke run fails on any error, lost or duplicated event, or a workload that did nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.procs import REPO_ROOT, clean_env

pytestmark = pytest.mark.etcd


def test_bench_smoke_runs_every_workload() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "smoke"],
        cwd=REPO_ROOT,
        env=clean_env(PYTHONPATH=str(REPO_ROOT)),  # upb protobuf for the load generator
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    for workload in ("range-get", "range-list", "range-list-paged", "put", "txn-update",
                     "watch-latency", "watch-fanout", "lease-keepalive", "memory"):
        assert workload in done.stdout, f"smoke did not run {workload}"
