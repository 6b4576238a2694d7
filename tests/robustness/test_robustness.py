"""Robustness scenarios: histories under faults, checked for linearizability and watch guarantees.

In the spirit of etcd's robustness tests and Jepsen: clients (runner.py) run random operations
on a few keys through every gateway while faults (targets.py) are injected one at a time; the
whole history is then checked (checks.py, linearizability.py):

- per key, the history is linearizable for a register with compare-and-set (unknown writes may
  take effect at any time after their invocation, or never);
- across keys: revisions dense and each used once, real-time order of revisions, serializable
  reads never going backwards per gateway, every acknowledged write in the log at its revision
  and no definitely-failed write there;
- watches: ordered, no gap, no duplicate, every acknowledged write delivered with its value at
  its mod revision, resumed from the last revision + 1 after each break;
- no gateway log line that means a bug (targets.BUG_PATTERNS).

Scenarios: real etcd (the baseline: the harness must pass there), the embedded store, and three
gateways on one Cosmos container (one with kills and pauses, one with Cosmos outages, 429 storms,
503s and lost batch responses). ``ROBUSTNESS_SECONDS`` sets each run's length (default 15 s, as
in ``make test``; ``make robustness`` runs longer ones). A failing run's history is saved as JSON
beside the test's temporary directory, named in the failure.
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster
from support.cosmos import new_database, start_local_cosmos
from support.procs import etcd_binary, start_etcd, start_etcdgw

from .checks import check_all
from .history import History
from .runner import Workload, run_workload
from .targets import FaultRecord, Target, fault_loop

SECONDS = float(os.environ.get("ROBUSTNESS_SECONDS", "15"))
SEED = int(os.environ.get("ROBUSTNESS_SEED", "0")) or random.randrange(1, 2**31)

pytestmark = pytest.mark.timeout(int(SECONDS * 4 + 150))


def _summary(name: str, h: History, faults: list[FaultRecord], verdict: str) -> str:
    kinds = collections.Counter(op.kind for op in h.ops)
    unknown = sum(op.complete is None for op in h.ops)
    failed = sum(op.failed for op in h.ops)
    done = len(h.ops) - unknown - failed
    f = collections.Counter(r.kind for r in faults)
    return (f"robustness {name}: {len(h.ops)} ops ({done} completed, {unknown} unknown, "
            f"{failed} failed; {dict(sorted(kinds.items()))}), {len(h.watches)} watchers, "
            f"final revision {h.final_rev}, faults {dict(sorted(f.items()))} "
            f"in {SECONDS:.0f} s, seed {SEED}: {verdict}")


async def _run(target: Target, faults: list[str], tmp_path: Path, *, clients: int = 9,
               keys: int = 4) -> None:
    rng = random.Random(SEED)
    records: list[FaultRecord] = []
    workload = Workload(clients=clients, keys=keys, seed=SEED)
    history, problems = await run_workload(
        target.endpoints, workload, SECONDS,
        lambda stop: fault_loop(target, faults, rng, stop, records))
    violations = problems + check_all(history) + target.log_problems()
    completed = sum(op.complete is not None and not op.failed for op in history.ops)
    if completed < 50:
        violations.append(f"only {completed} operations completed: the run tested nothing")
    if faults and not records:
        violations.append("no fault was injected")
    verdict = "PASS" if not violations else f"FAIL ({len(violations)} violations)"
    print("\n" + _summary(target.name, history, records, verdict))
    if violations:
        saved = tmp_path / f"history-{target.name}-{SEED}.json"
        history.save(saved)
        shown = "\n".join(violations[:20])
        pytest.fail(f"{_summary(target.name, history, records, verdict)}\n{shown}\n"
                    f"history saved to {saved}", pytrace=False)


@pytest.fixture
def etcd_target(tmp_path: Path) -> Iterator[Target]:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (.ci/run installs it)", pytrace=False)
        pytest.skip("etcd binary not found")
    target = Target("etcd", [start_etcd(tmp_path / "etcd")])
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def embedded_target(tmp_path: Path) -> Iterator[Target]:
    target = Target("embedded", [start_etcdgw(tmp_path / "gw")])
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def cosmos_trio(tmp_path: Path) -> Iterator[Target]:
    cosmos = start_local_cosmos(faults=True)
    try:
        cluster = Cluster(cosmos.url, new_database(), tmp_path)
        cluster.start_all(3)
        target = Target("cosmos-3", cluster.servers, cosmos=cosmos, faults_api=cosmos.faults)
        try:
            yield target
        finally:
            if cosmos.proc.poll() is None:
                cosmos.resume()  # an outage must not outlive the test
            target.stop()
    finally:
        cosmos.stop()


async def test_etcd_kills_and_pauses(etcd_target: Target, tmp_path: Path) -> None:
    """The baseline: the harness passes against real etcd under the same faults."""
    await _run(etcd_target, ["kill", "pause"], tmp_path)


async def test_embedded_kills_and_pauses(embedded_target: Target, tmp_path: Path) -> None:
    await _run(embedded_target, ["kill", "pause"], tmp_path)


async def test_cosmos_three_gateways_kills_and_pauses(cosmos_trio: Target,
                                                      tmp_path: Path) -> None:
    await _run(cosmos_trio, ["kill", "pause"], tmp_path)


async def test_cosmos_three_gateways_cosmos_faults(cosmos_trio: Target, tmp_path: Path) -> None:
    await _run(cosmos_trio, ["outage", "throttle", "unavailable", "lose"], tmp_path)

