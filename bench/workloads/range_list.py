"""``range-list``: Range over a prefix of 500 keys with 1 KiB values (a Kubernetes LIST)."""

from __future__ import annotations

from bench.client import Kv, prefix_end
from bench.proto import rpc_pb2
from bench.workloads.base import Ctx, OpFn, Params, State, Workload, kube_key, random_values


class RangeList(Workload):
    name = "range-list"
    summary = "Range over a prefix of 500 keys x 1 KiB values (a Kubernetes LIST)"
    default_clients = (1, 8)
    default_keys = 500
    default_value_size = 1024
    rate_label = "lists/s"
    figures = ("lists/s", "MB/s", "p50 ms", "p99 ms")

    async def prepare(self, kv: Kv, params: Params) -> State:
        prefix = kube_key("configmaps", "bench-list", "")
        await kv.delete_prefix(prefix)
        values = random_values(params.keys, params.value_size)
        await kv.load((prefix + b"cm-%06d" % i, v) for i, v in enumerate(values))
        request = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        encoded = request.SerializeToString()
        resp = rpc_pb2.RangeResponse.FromString(await kv.range_raw(encoded))
        if resp.count != params.keys or len(resp.kvs) != params.keys:
            raise RuntimeError(f"range-list: listed {resp.count} keys, loaded {params.keys}")
        return {"request": encoded}

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        request: bytes = state["request"]
        ch = ctx.worker

        async def op() -> int:
            return len(await kv.range_raw(request, ch))

        return op

    def extra_figures(
        self, ops: int, seconds: float, nbytes: int, ctxs: dict[str, int]
    ) -> dict[str, float]:
        return {"MB/s": nbytes / seconds / 1e6}
