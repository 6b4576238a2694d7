"""``txn-update``: Kubernetes' optimistic update, ``Txn{MOD(key)==rev; Put; else Range}``.

As kube-apiserver's GuaranteedUpdate: each client picks a key, sends the Txn with the mod revision
it last saw; on a failed compare it takes the current revision from ``responses[0].response_range``
and retries. One operation = one successful update (retries included in its latency); the
conflict rate is failed compares / Txns sent. Each client process first learns every key's current
mod revision (the apiserver's watch cache).
"""

from __future__ import annotations

from bench.client import Kv, prefix_end
from bench.proto import rpc_pb2
from bench.workloads.base import Ctx, OpFn, Params, State, Workload, kube_key, random_values

MOD = rpc_pb2.Compare.CompareTarget.Value("MOD")
EQUAL = rpc_pb2.Compare.CompareResult.Value("EQUAL")
MAX_RETRIES = 100


class TxnUpdate(Workload):
    name = "txn-update"
    summary = "Txn{MOD(key)==rev; Put; else Range} over 1000 keys (Kubernetes update)"
    default_clients = (16,)
    default_keys = 1000
    default_value_size = 1024
    figures = ("ops/s", "p50 ms", "p99 ms", "conflict %")

    async def prepare(self, kv: Kv, params: Params) -> State:
        prefix = kube_key("pods", "bench-txn", "")
        await kv.delete_prefix(prefix)
        values = random_values(min(params.keys, 64), params.value_size)
        await kv.load(
            (prefix + b"pod-%06d" % i, values[i % len(values)]) for i in range(params.keys)
        )
        return {"prefix": prefix}

    async def setup_proc(self, kv: Kv, params: Params, state: State) -> State:
        prefix: bytes = state["prefix"]
        req = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True)
        resp = await kv.range(req)
        if not resp.kvs:
            raise RuntimeError("txn-update: no keys under the prefix")
        revs = {kv_.key: kv_.mod_revision for kv_ in resp.kvs}
        return {**state, "keys": sorted(revs), "revs": revs}

    def make_op(self, kv: Kv, params: Params, state: State, ctx: Ctx) -> OpFn:
        keys: list[bytes] = state["keys"]
        revs: dict[bytes, int] = state["revs"]  # shared by the clients of one process
        values = random_values(16, params.value_size, ctx.rng)

        async def op() -> int:
            key = keys[ctx.rng.randrange(len(keys))]
            value = values[ctx.rng.randrange(len(values))]
            put = rpc_pb2.PutRequest(key=key, value=value)
            for _ in range(MAX_RETRIES):
                req = rpc_pb2.TxnRequest(
                    compare=[
                        rpc_pb2.Compare(key=key, target=MOD, result=EQUAL, mod_revision=revs[key])
                    ],
                    success=[rpc_pb2.RequestOp(request_put=put)],
                    failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
                )
                resp = await kv.txn(req, ctx.worker)
                ctx.attempts += 1
                if resp.succeeded:
                    revs[key] = resp.header.revision
                    return 0
                ctx.conflicts += 1
                kvs = resp.responses[0].response_range.kvs
                revs[key] = kvs[0].mod_revision if kvs else 0
            raise RuntimeError(f"txn-update: {MAX_RETRIES} conflicts in a row on {key!r}")

        return op

    def extra_figures(
        self, ops: int, seconds: float, nbytes: int, ctxs: dict[str, int]
    ) -> dict[str, float]:
        attempts = ctxs.get("attempts", 0)
        return {"conflict %": 100.0 * ctxs.get("conflicts", 0) / attempts if attempts else 0.0}
