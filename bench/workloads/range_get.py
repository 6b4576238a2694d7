"""``range-get``: a linearizable Get of one existing key (key 32 B, value 256 B)."""

from __future__ import annotations

from bench.client import Kv
from bench.proto import rpc_pb2
from bench.workloads.base import Ctx, OpFn, Params, State, Workload, kube_key, random_values


class RangeGet(Workload):
    name = "range-get"
    summary = "linearizable Get of one existing key (key 32 B, value 256 B)"
    default_clients = (1, 16, 64)
    default_keys = 1
    default_value_size = 256
    figures = ("ops/s", "p50 ms", "p99 ms")

    async def prepare(self, kv: Kv, params: Params) -> State:
        key = kube_key("pods", "default", "get-00000")  # 32 bytes
        assert len(key) == 32, key
        (value,) = random_values(1, params.value_size)
        await kv.put(rpc_pb2.PutRequest(key=key, value=value))
        # The request never changes: encode it once and send bytes.
        request = rpc_pb2.RangeRequest(key=key).SerializeToString()
        resp = rpc_pb2.RangeResponse.FromString(await kv.range_raw(request))
        if resp.count != 1 or resp.kvs[0].value != value:
            raise RuntimeError(f"range-get: read back {resp.count} keys, expected the one put")
        return {"request": request}

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        request: bytes = state["request"]
        ch = ctx.worker

        async def op() -> int:
            return len(await kv.range_raw(request, ch))

        return op
