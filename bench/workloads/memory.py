"""``memory``: load N keys of 1 KiB, report the server's RSS and bytes per key; restart, time it.

Only for servers the bench started (it reads /proc/PID/status and restarts them). Every round
starts the server on an empty data dir, measures its RSS, loads the keys (Txns of 100 Puts, as the
other workloads' loaders; values incompressible), measures RSS again, then restarts it on the same
data and measures the time until a linearizable Range answers, and the RSS after the restart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

from bench.client import Kv
from bench.targets import Target
from bench.workloads.base import Params, Workload, kube_key, random_values


class Memory(Workload):
    name = "memory"
    summary = "load N keys x 1 KiB; server RSS, bytes/key; time to serve after a restart"
    default_clients = (16,)  # loader concurrency
    default_keys = 100_000
    default_value_size = 1024
    custom = True
    figures = ("RSS MB", "bytes/key", "load s", "restart s", "RSS after restart MB")

    def run_round(self, target: Target, params: Params, rnd: int = 0) -> dict[str, Any]:
        if not target.started:
            raise RuntimeError("memory: only for targets started by the bench (--start)")
        target.reset()
        time.sleep(0.5)  # let start-up allocations settle before the baseline
        base = target.rss_bytes() or 0
        pool = random_values(256, params.value_size)
        rng = random.Random(1)

        def items() -> Iterator[tuple[bytes, bytes]]:
            for i in range(params.keys):
                name = f"pod-{i:08d}"
                key = kube_key("pods", f"ns-{i % 100:03d}", name)
                yield key, pool[i % len(pool)][:-8] + rng.randbytes(8)

        async def load() -> None:
            kv = Kv(target, channels=2)
            try:
                await kv.load(items(), batch=100, concurrency=max(1, params.clients))
            finally:
                await kv.close()

        t0 = time.monotonic()
        asyncio.run(load())
        load_s = time.monotonic() - t0
        loaded = target.rss_bytes() or 0
        restart_s = target.restart()
        after = target.rss_bytes() or 0
        return {
            "RSS MB": loaded / 1e6,
            "bytes/key": (loaded - base) / max(1, params.keys),
            "load s": load_s,
            "restart s": restart_s,
            "RSS after restart MB": after / 1e6,
            "RSS empty MB": base / 1e6,
        }
