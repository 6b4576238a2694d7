"""The workload registry: names are part of the interface (see bench-spec.md)."""

from __future__ import annotations

from bench.workloads.base import Workload
from bench.workloads.lease import LeaseKeepalive
from bench.workloads.memory import Memory
from bench.workloads.put import Put
from bench.workloads.range_get import RangeGet
from bench.workloads.range_list import RangeList
from bench.workloads.range_list_paged import RangeListPaged
from bench.workloads.txn_update import TxnUpdate
from bench.workloads.watch import WatchFanout, WatchLatency

WORKLOADS: dict[str, type[Workload]] = {
    w.name: w
    for w in (
        RangeGet,
        RangeList,
        RangeListPaged,
        Put,
        TxnUpdate,
        WatchLatency,
        WatchFanout,
        LeaseKeepalive,
        Memory,
    )
}


def get_workload(name: str) -> Workload:
    return WORKLOADS[name]()


__all__ = ["WORKLOADS", "Workload", "get_workload"]
