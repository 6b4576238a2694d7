"""Workloads whose services etcdgw does not serve yet (Watch, Lease): registered names only."""

from __future__ import annotations

from typing import ClassVar

from bench.workloads.base import Workload


class Pending(Workload):
    implemented = False
    needs: ClassVar[str] = ""


class WatchLatency(Pending):
    name = "watch-latency"
    summary = "1 watcher on a prefix, writer at a fixed rate: put-ack to event delay"
    needs = "the Watch service"


class WatchFanout(Pending):
    name = "watch-fanout"
    summary = "1,000-10,000 watchers over 10-100 streams on one prefix"
    needs = "the Watch service"


class LeaseKeepalive(Pending):
    name = "lease-keepalive"
    summary = "1,000 leases kept alive every second through streams"
    needs = "the Lease service"
