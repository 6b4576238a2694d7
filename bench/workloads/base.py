"""What a workload is: how to load its keys, and one operation a client repeats.

A workload object lives in the parent (``prepare``: load keys once per target, before any timing)
and is rebuilt by name in every client process (``setup_proc``, then ``make_op`` per concurrent
client). Everything passed between them (``Params``, the prepared state) is plain picklable data.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.client import Kv
from bench.targets import Target

#: One operation: returns the number of response bytes (for MB/s figures).
OpFn = Callable[[], Awaitable[int]]
State = dict[str, Any]


@dataclass(frozen=True)
class Params:
    """One run's parameters (what the JSON result records under ``parameters``)."""

    clients: int = 1
    duration: float = 5.0
    warmup: float = 1.0
    max_ops: int = 1_000_000
    procs: int = 1
    channels: int = 2
    keys: int = 0
    value_size: int = 0
    page_size: int = 500
    run_tag: int = 0
    # Streaming workloads (watch-*, lease-keepalive); 0 = the workload's default.
    rate: float = 0.0  # writes/s (watch) or keepalives per lease per second (lease)
    watchers: int = 0
    streams: int = 0
    leases: int = 0


@dataclass
class Ctx:
    """Per concurrent client: who it is, its own RNG, and counters the workload may bump."""

    proc: int
    worker: int
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(8)))
    attempts: int = 0
    conflicts: int = 0


def kube_key(resource: str, namespace: str, name: str) -> bytes:
    """``/registry/<resource>/<namespace>/<name>``, Kubernetes' key layout."""
    return f"/registry/{resource}/{namespace}/{name}".encode()


def sized_key(prefix: bytes, ident: str, size: int) -> bytes:
    """``prefix + ident`` left-padded with zeros in ident to exactly ``size`` bytes."""
    pad = size - len(prefix) - len(ident)
    return prefix + b"0" * max(0, pad) + ident.encode()


class Workload:
    """Base class; subclasses set the class attributes and override the hooks."""

    name: ClassVar[str]
    summary: ClassVar[str]
    default_clients: ClassVar[tuple[int, ...]] = (1,)
    default_keys: ClassVar[int] = 0
    default_value_size: ClassVar[int] = 0
    rate_label: ClassVar[str] = "ops/s"
    #: Figures shown in the table, in order (every run also records client/server CPU).
    figures: ClassVar[tuple[str, ...]] = ("ops/s", "p50 ms", "p99 ms")
    #: Only for servers the bench started itself (it restarts them); no ops loop.
    custom: ClassVar[bool] = False
    #: Runs its own client processes (``run_round``), no ops loop: watch and lease streams.
    #: Unlike ``custom`` it works on any endpoint and reports latency and client CPU.
    stream: ClassVar[bool] = False
    default_procs: ClassVar[int] = 1
    implemented: ClassVar[bool] = True

    def run_round(self, target: Target, params: Params, rnd: int) -> dict[str, Any]:
        """For ``custom`` and ``stream`` workloads: one whole measured round against
        ``target``; ``custom`` ones return their figures, ``stream`` ones a run record."""
        raise NotImplementedError(f"{self.name} has an ops loop, not run_round")

    def levels(self, args: Any) -> list[dict[str, Any]]:
        """The parameter sets measured one after the other (each: Params overrides, plus a
        ``label`` for the table); by default one per ``--clients`` level."""
        return [
            {"clients": c, "label": f"clients={c}"} for c in (args.clients or self.default_clients)
        ]

    async def prepare(self, kv: Kv, params: Params) -> State:
        """Load the keys (parent process, once per target); returns state for the clients."""
        return {}

    async def setup_proc(self, kv: Kv, params: Params, state: State) -> State:
        """Per client process, before timing (e.g. learn current revisions)."""
        return state

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        raise NotImplementedError

    def extra_figures(
        self, ops: int, seconds: float, nbytes: int, ctxs: dict[str, int]
    ) -> dict[str, float]:
        """Figures beyond rate and latency percentiles (MB/s, conflict rate)."""
        return {}


def random_values(count: int, size: int, rng: random.Random | None = None) -> list[bytes]:
    """``count`` incompressible values of ``size`` bytes (a pool clients cycle through)."""
    rng = rng or random.Random(os.urandom(8))
    return [rng.randbytes(size) for _ in range(count)]
