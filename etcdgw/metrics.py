"""Prometheus metrics, rendered as the text exposition format (version 0.0.4) for ``/metrics``.

No client library: the few metric kinds needed here (counters, gauges read at scrape time,
histograms) fit in this module, and the hot paths only add to plain integers. Names follow etcd
and go-grpc-prometheus where the meaning is the same, so existing dashboards work (HT04):

- ``grpc_server_started_total``, ``grpc_server_handled_total`` (by ``grpc_code``) and the
  ``grpc_server_handling_seconds`` histogram, per ``grpc_service``/``grpc_method``/``grpc_type``;
  counted at the server boundary, for every served method.
- ``etcd_server_has_leader`` (always 1: the gateway is its own leader), ``etcd_server_is_leader``,
  ``etcd_mvcc_db_total_size_in_bytes``, ``etcd_mvcc_db_total_size_in_use_in_bytes``,
  ``etcd_server_quota_backend_bytes``, ``etcd_debugging_mvcc_current_revision``,
  ``etcd_debugging_mvcc_compact_revision``, ``etcd_debugging_mvcc_watcher_total``,
  ``etcdgw_alarms_active`` and ``etcdgw_leases`` (when a lease table is attached): gauges the
  gateway registers with :meth:`Metrics.gauge`.
- ``etcd_disk_backend_commit_duration_seconds`` and ``etcdgw_store_commit_batch_requests`` from
  the store's commit pipeline (one observation per group commit).
- ``etcdgw_store_reloads_total`` and ``etcdgw_store_reload_failures_total`` (shared logs): tails
  lost and reloaded in process, and reload attempts that failed and were tried again; counters
  the gateway registers with :meth:`Metrics.counter`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Final

from grpclib.const import Cardinality, Status

__all__ = ["CallStats", "Histogram", "Metrics", "code_name"]

#: go-grpc-prometheus's default buckets (seconds).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: etcd's backend commit buckets: 1 ms .. 8 s, doubling.
COMMIT_BUCKETS: Final = tuple(0.001 * 2**i for i in range(14))
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_GRPC_TYPES: Final = {
    Cardinality.UNARY_UNARY: "unary",
    Cardinality.UNARY_STREAM: "server_stream",
    Cardinality.STREAM_UNARY: "client_stream",
    Cardinality.STREAM_STREAM: "bidi_stream",
}
# grpc-go's codes.Code.String(), which go-grpc-prometheus puts in grpc_code.
_CODE_NAMES: Final = {
    Status.OK: "OK",
    Status.CANCELLED: "Canceled",
    Status.UNKNOWN: "Unknown",
    Status.INVALID_ARGUMENT: "InvalidArgument",
    Status.DEADLINE_EXCEEDED: "DeadlineExceeded",
    Status.NOT_FOUND: "NotFound",
    Status.ALREADY_EXISTS: "AlreadyExists",
    Status.PERMISSION_DENIED: "PermissionDenied",
    Status.RESOURCE_EXHAUSTED: "ResourceExhausted",
    Status.FAILED_PRECONDITION: "FailedPrecondition",
    Status.ABORTED: "Aborted",
    Status.OUT_OF_RANGE: "OutOfRange",
    Status.UNIMPLEMENTED: "Unimplemented",
    Status.INTERNAL: "Internal",
    Status.UNAVAILABLE: "Unavailable",
    Status.DATA_LOSS: "DataLoss",
    Status.UNAUTHENTICATED: "Unauthenticated",
}


def code_name(status: Status) -> str:
    return _CODE_NAMES.get(status, "Unknown")


class Histogram:
    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * len(self.bounds)  # not cumulative; summed when rendered
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect_left(self.bounds, value)
        if i < len(self.buckets):
            self.buckets[i] += 1
        self.count += 1
        self.sum += value

    def render(self, name: str, labels: str, out: list[str]) -> None:
        sep = "," if labels else ""
        running = 0
        for bound, n in zip(self.bounds, self.buckets, strict=True):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{_num(bound)}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_num(self.sum)}")
        out.append(f"{name}_count{braces} {self.count}")


class CallStats:
    """Counters of one gRPC method."""

    __slots__ = ("handled", "labels", "latency", "started")

    def __init__(self, path: str, cardinality: Cardinality) -> None:
        _, service, method = path.split("/")
        grpc_type = _GRPC_TYPES[cardinality]
        self.labels = f'grpc_method="{method}",grpc_service="{service}",grpc_type="{grpc_type}"'
        self.started = 0
        self.handled: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)

    def finish(self, code: str, seconds: float) -> None:
        self.handled[code] = self.handled.get(code, 0) + 1
        self.latency.observe(seconds)


Gauge = Callable[[], float]


class Metrics:
    """The metrics of one gateway; gauges are callables read at scrape time."""

    def __init__(self) -> None:
        self._calls: dict[str, CallStats] = {}
        self._gauges: list[tuple[str, str, Gauge]] = []
        self._counters: list[tuple[str, str, Gauge]] = []  # read at scrape time too
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.commit_batch = Histogram(BATCH_BUCKETS)

    def call(self, path: str, cardinality: Cardinality) -> CallStats:
        stats = self._calls.get(path)
        if stats is None:
            stats = self._calls[path] = CallStats(path, cardinality)
        return stats

    def gauge(self, name: str, help_text: str, read: Gauge) -> None:
        """Add (or replace) a gauge read at every scrape."""
        self._gauges = [g for g in self._gauges if g[0] != name]
        self._gauges.append((name, help_text, read))

    def counter(self, name: str, help_text: str, read: Gauge) -> None:
        """Add (or replace) a counter kept elsewhere, read at every scrape (only grows)."""
        self._counters = [c for c in self._counters if c[0] != name]
        self._counters.append((name, help_text, read))

    def on_commit(self, requests: int, seconds: float) -> None:
        """The store's commit listener: one group commit of ``requests`` requests."""
        self.commit_batch.observe(requests)
        self.commit_seconds.observe(seconds)

    def render(self) -> str:
        out: list[str] = []
        calls = sorted(self._calls.values(), key=lambda s: s.labels)
        _header(out, "grpc_server_started_total", "counter",
                "Total number of RPCs started on the server.")
        for s in calls:
            out.append(f"grpc_server_started_total{{{s.labels}}} {s.started}")
        _header(out, "grpc_server_handled_total", "counter",
                "Total number of RPCs completed on the server, regardless of success or failure.")
        for s in calls:
            for code, n in sorted(s.handled.items()):
                out.append(f'grpc_server_handled_total{{grpc_code="{code}",{s.labels}}} {n}')
        _header(out, "grpc_server_handling_seconds", "histogram",
                "Histogram of response latency (seconds) of gRPC that had been application-level "
                "handled by the server.")
        for s in calls:
            s.latency.render("grpc_server_handling_seconds", s.labels, out)
        for kind, reads in (("gauge", self._gauges), ("counter", self._counters)):
            for name, help_text, read in reads:
                try:
                    value = float(read())
                except Exception:  # a gauge must never break the scrape
                    value = math.nan
                _header(out, name, kind, help_text)
                out.append(f"{name} {_num(value)}")
        _header(out, "etcd_disk_backend_commit_duration_seconds", "histogram",
                "The latency distributions of commit called by backend.")
        self.commit_seconds.render("etcd_disk_backend_commit_duration_seconds", "", out)
        _header(out, "etcdgw_store_commit_batch_requests", "histogram",
                "Write requests committed together in one backend commit (group commit).")
        self.commit_batch.render("etcdgw_store_commit_batch_requests", "", out)
        out.append("")
        return "\n".join(out)


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
