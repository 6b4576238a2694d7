"""Several ``etcdgw serve --backend cosmos`` processes on one database (tests that need a
cluster of gateways: tests/integration/test_cosmos_gateways.py, the robustness suite)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cosmos import drop_database_now, gateway_args, new_database
from .procs import Server, start_etcdgw

__all__ = ["Cluster", "cluster_of"]


@dataclass
class Cluster:
    """``etcdgw serve --backend cosmos`` processes named gw0, gw1, ... on one database."""

    endpoint: str
    database: str
    root: Path
    servers: list[Server] = field(default_factory=list)
    starts: int = 0

    def start(self, i: int) -> Server:
        """Start (or restart) gateway ``gw{i}``: same name, so the same member id."""
        self.starts += 1
        server = start_etcdgw(self.root / f"gw{i}-{self.starts}", name=f"gw{i}",
                              extra_args=gateway_args(self.endpoint, self.database))
        if i < len(self.servers):
            self.servers[i] = server
        else:
            self.servers.append(server)
        return server

    def start_all(self, n: int) -> list[Server]:
        with ThreadPoolExecutor(n) as pool:  # ~1 s each, mostly imports: in parallel
            futures = [pool.submit(start_etcdgw, self.root / f"gw{i}-0", name=f"gw{i}",
                                   extra_args=gateway_args(self.endpoint, self.database))
                       for i in range(n)]
        # Those that started are stopped by stop() even if another one failed.
        self.servers = [f.result() for f in futures if f.exception() is None]
        return [f.result() for f in futures]

    def stop(self) -> None:
        try:
            for server in self.servers:
                if not server.stopped:
                    server.stop(expect_clean_exit=server.process.poll() is None)
        finally:
            drop_database_now(self.endpoint, self.database)


@contextmanager
def cluster_of(n: int, endpoint: str, root: Path) -> Iterator[Cluster]:
    cluster = Cluster(endpoint, new_database(), root)
    try:
        cluster.start_all(n)
        yield cluster
    finally:
        cluster.stop()


