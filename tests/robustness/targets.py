"""What the robustness suite runs against, and the faults it injects there.

A target is a set of server processes that clients reach on fixed loopback ports (a restarted
process keeps its port and data directory), and, for the Cosmos backend, the Cosmos test server
they share. Faults, each healed by the injector before the next one:

``kill``     SIGKILL one server, then start it again (same command line): a crash. Writes in
             flight there become "unknown"; nothing acknowledged may be lost.
``pause``    SIGSTOP one server, SIGCONT later: a process that stops answering without closing
             its sockets (a GC pause, a stalled VM). Its clients time out.
``outage``   SIGSTOP the Cosmos test server: every gateway's Cosmos requests hang, then time
             out, for as long as it lasts.
``throttle`` the Cosmos test server answers a share of batches and reads with 429 (and
             ``x-ms-retry-after-ms``): a request-unit storm.
``unavailable`` the Cosmos test server answers a share of requests with 503.
``lose``     the Cosmos test server applies the next transactional batches but never answers
             them: the gateway must resolve each commit's outcome before it answers.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from support.cosmos import LocalCosmos
from support.cosmos_server_faults import ServerFaults
from support.procs import Server, respawn

__all__ = ["FaultRecord", "Target", "fault_loop"]

Heal = Callable[[], Awaitable[None]]

#: Lines in an etcdgw log that mean a bug, whatever the faults: an unhandled error in the event
#: loop or a request that failed inside the gateway rather than with an etcd error.
BUG_PATTERNS = re.compile(
    r"Task was destroyed but it is pending|exception was never retrieved|"
    r"unexpected error serving|commit pipeline failed|Unhandled|"
    r"applying revision \d+ from the log failed|the log skipped from"
)


@dataclass
class FaultRecord:
    kind: str
    where: str
    start: float
    end: float = 0.0


@dataclass
class Target:
    name: str
    servers: list[Server]
    cosmos: LocalCosmos | None = None  # the Cosmos test server, when the backend is Cosmos
    faults_api: ServerFaults | None = None  # its fault injection
    paused: set[int] = field(default_factory=set)

    def endpoints(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.servers]

    # -- faults ---------------------------------------------------------------------------

    async def inject(self, kind: str, rng: random.Random) -> tuple[str, Heal]:
        """Start fault ``kind``; returns where it hit and the coroutine that heals it."""
        if kind in ("kill", "pause"):
            i = rng.randrange(len(self.servers))
            server = self.servers[i]
            if kind == "kill":
                server.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(server.process.wait)

                async def heal_kill() -> None:
                    self.servers[i] = await asyncio.to_thread(respawn, server)

                return server.name + f"#{i}", heal_kill
            os.kill(server.process.pid, signal.SIGSTOP)
            self.paused.add(i)

            async def heal_pause() -> None:
                os.kill(server.process.pid, signal.SIGCONT)
                self.paused.discard(i)

            return server.name + f"#{i}", heal_pause
        if kind == "outage":
            if self.cosmos is None:
                raise ValueError(f"{self.name}: no Cosmos test server to pause")
            cosmos = self.cosmos
            cosmos.pause()

            async def heal_outage() -> None:
                cosmos.resume()

            return "cosmos", heal_outage
        api = self.faults_api
        if api is None:
            raise ValueError(f"{self.name}: fault {kind!r} needs the Cosmos test server")
        if kind == "throttle":
            for match in ("batch", "meta-read"):
                await api.aarm(match, "status", status=429, retry_after_ms=20, count=-1,
                               probability=0.5)
        elif kind == "unavailable":
            await api.aarm("any", "status", status=503, count=-1, probability=0.3)
        elif kind == "lose":
            await api.aarm("batch", "lose", count=2)
        else:
            raise ValueError(f"unknown fault {kind!r}")

        async def heal_rules() -> None:
            await api.aclear()

        return "cosmos", heal_rules

    # -- after the run --------------------------------------------------------------------

    def log_problems(self) -> list[str]:
        """Bug lines in the etcdgw logs (etcd's logs are not read)."""
        out = []
        for s in self.servers:
            if s.kind != "etcdgw":
                continue
            try:
                text = Path(s.log_path).read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if BUG_PATTERNS.search(line):
                    out.append(f"{s.name}: {line.strip()}")
        return out

    def stop(self) -> None:
        for i in sorted(self.paused):
            os.kill(self.servers[i].process.pid, signal.SIGCONT)
        self.paused.clear()
        errors = []
        for s in self.servers:
            try:
                s.stop(expect_clean_exit=s.kind == "etcdgw")
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n".join(errors))


async def fault_loop(target: Target, kinds: list[str], rng: random.Random, stop: asyncio.Event,
                     records: list[FaultRecord], *, gap: tuple[float, float] = (1.0, 2.5),
                     hold: tuple[float, float] = (0.5, 2.0)) -> None:
    """Inject one fault at a time until ``stop`` is set; return with the last one healed."""

    async def wait(seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await stop.wait()
        except TimeoutError:
            pass

    if not kinds:
        await stop.wait()
        return
    order: list[str] = []
    while not stop.is_set():
        await wait(rng.uniform(*gap))
        if stop.is_set():
            return
        if not order:  # every kind once, in a random order, then again: all of them get hit
            order = rng.sample(kinds, len(kinds))
        kind = order.pop()
        where, heal = await target.inject(kind, rng)
        record = FaultRecord(kind, where, time.monotonic())
        records.append(record)
        try:
            await wait(rng.uniform(*hold))
        finally:
            await heal()
            record.end = time.monotonic()
