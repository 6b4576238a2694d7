"""``put``: Put of distinct keys (key 32 B, value 256 B)."""

from __future__ import annotations

from bench.client import Kv
from bench.proto import rpc_pb2
from bench.workloads.base import Ctx, OpFn, Params, State, Workload, random_values, sized_key

PREFIX = b"/registry/events/bench/"  # + 9 characters = 32 bytes


class Put(Workload):
    name = "put"
    summary = "Put of distinct keys (key 32 B, value 256 B)"
    default_clients = (1, 16, 64)
    default_value_size = 256
    figures = ("ops/s", "p50 ms", "p99 ms")

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        values = random_values(32, params.value_size, ctx.rng)
        # Distinct across runs (run_tag), client processes and clients: 2+2+5 hex digits.
        ident = f"{params.run_tag % 256:02x}{ctx.worker % 256:02x}"
        counter = [0]

        async def op() -> int:
            n = counter[0]
            counter[0] = n + 1
            key = sized_key(PREFIX, f"{ident}{n % 0x100000:05x}", 32)
            await kv.put(rpc_pb2.PutRequest(key=key, value=values[n % 32]), ctx.worker)
            return 0

        return op
