"""``range-list-paged``: a 5000-key prefix read in pages of 500, revision pinned (apiserver paging).

Each client walks the prefix like kube-apiserver's paginated LIST: the first page at the current
revision, every following page from just after the previous page's last key at that same revision
(``limit`` = page size). One operation = one page.
"""

from __future__ import annotations

from bench.client import Kv, prefix_end
from bench.proto import rpc_pb2
from bench.workloads.base import Ctx, OpFn, Params, State, Workload, kube_key, random_values


class RangeListPaged(Workload):
    name = "range-list-paged"
    summary = "5000 keys x 1 KiB read in pages of 500 with the revision pinned"
    default_clients = (1, 8)
    default_keys = 5000
    default_value_size = 1024
    rate_label = "pages/s"
    figures = ("pages/s", "MB/s", "p50 ms", "p99 ms")

    async def prepare(self, kv: Kv, params: Params) -> State:
        prefix = kube_key("secrets", "bench-paged", "")
        await kv.delete_prefix(prefix)
        values = random_values(min(params.keys, 256), params.value_size)
        await kv.load((prefix + b"s-%07d" % i, values[i % len(values)]) for i in range(params.keys))
        return {"prefix": prefix}

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        prefix: bytes = state["prefix"]
        end = prefix_end(prefix)
        cursor = {"key": prefix, "rev": 0}

        async def op() -> int:
            req = rpc_pb2.RangeRequest(
                key=cursor["key"], range_end=end, limit=params.page_size, revision=cursor["rev"]
            )
            resp = await kv.range(req, ctx.worker)
            if resp.more and resp.kvs:
                cursor["key"] = resp.kvs[-1].key + b"\x00"
                cursor["rev"] = resp.header.revision if cursor["rev"] == 0 else cursor["rev"]
            else:
                cursor["key"], cursor["rev"] = prefix, 0
            return int(resp.ByteSize())

        return op

    def extra_figures(
        self, ops: int, seconds: float, nbytes: int, ctxs: dict[str, int]
    ) -> dict[str, float]:
        return {"MB/s": nbytes / seconds / 1e6}
