"""Differential tests: hypothesis-generated KV operation sequences, real etcd vs etcdgw.

Every example is a list of KV requests (Put, DeleteRange, Txn, Range, Compact) sent one by one to
real etcd (Debian 3.4, the oracle) and to etcdgw; every response, or every error's gRPC code and
exact message, must be identical once cluster_id, member_id and raft_term are zeroed
(``support.driver.normalize``). etcdgw is driven two ways (parameter ``gw``):

- ``store``: etcdgw's Store in-process (``StoreDriver``): the pure core and commit pipeline;
- ``grpc``:  the ``python -m etcdgw serve`` subprocess over gRPC (``GrpcDriver``);
- ``grpc-cosmos``: the same on the Cosmos backend (``--backend cosmos``, the Cosmos test server).

Keyspace and revisions. Starting a fresh etcd+etcdgw pair per example would be far too slow, so
each parameter gets one fresh pair (both at revision 1) and the examples run sequentially on it:

- every example works under its own key prefix ``/diff/NNNNNN/`` (NNNNNN increases, so an earlier
  example's keys sort below every key of a later one and a from-key range sees only its own);
- revisions inside generated requests are *relative*: a value v > 0 in ``RangeRequest.revision``,
  the min/max filters, ``Compare.create_revision``/``mod_revision`` and
  ``CompactionRequest.revision`` means ``start - 1 + v`` where ``start`` is that server's revision
  when the example began (v = 1 is the state before the example's first request); values <= 0
  are sent as they are. Revisions in responses are shown relative the same way and key prefixes
  are stripped, so a failing example prints readably. As long as etcdgw is right both servers
  are at the same revision anyway; an example's final prefix Range catches a wrong advance.
- ``compact`` requests use relative revisions like the rest (so most land in the future or
  below the compaction point); ``compact_recent`` ones, shown as ``CompactionRequest(revision=d)``,
  compact at (current revision - d), d in 0..3, so valid and repeated compactions are common and
  later reads in the example hit compacted revisions; ``range_recent`` likewise reads at
  (current revision - ``revision``). Compactions never pass the current
  revision, so every later example stays readable from its own start revision.

Where etcd 3.4 differs from the newer behaviour the contract specifies, the contract wins (see
``contract_outcome``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import betterproto2
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from support.driver import (
    Failure,
    GrpcDriver,
    KvDriver,
    StoreDriver,
    copy_message,
    normalize,
    walk_messages,
)
from support.procs import Server

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

pytestmark = pytest.mark.etcd

# ---------------------------------------------------------------------------------------------
# symbolic keys: generated requests carry key suffixes; these two stand for special keys

EMPTY_KEY = b"<empty>"  # sent as b"" (K01: "etcdserver: key is not provided")
PREFIX_END = b"<prefix-end>"  # sent as the prefix's range end (K05)
FROM_KEY = b"\x00"  # range_end "\x00": every key >= key (K03), sent as is

SUFFIXES = [b"a", b"b", b"c", b"d", b"b/x", b"a\x00", b"", b"\xff"]
VALUES = [b"", b"v1", b"v2", b"\x00\xfe"]
NO_SUCH_LEASES = [7, 0x7FFF_FFFF_FFFF_FFFF]  # never granted: P03 / X17

MAX_TXN_OPS = 128  # N01
SORT_OPTION_ERROR = Failure(3, "etcdserver: invalid sort option")  # R13


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def rel(v: int, base: int) -> int:
    return base - 1 + v if v > 0 else v


def materialize(request: Any, prefix: bytes, base: int) -> Any:
    """The request a server receives: keys under ``prefix``, relative revisions made absolute."""
    out = copy_message(request)

    def key(k: bytes) -> bytes:
        return b"" if k == EMPTY_KEY else prefix + k

    def end(e: bytes) -> bytes:
        if e in (b"", FROM_KEY):
            return e
        return prefix_end(prefix) if e == PREFIX_END else prefix + e

    for m in walk_messages(out):
        if isinstance(m, pb.RangeRequest):
            m.key, m.range_end = key(m.key), end(m.range_end)
            m.revision = rel(m.revision, base)
            m.min_mod_revision = rel(m.min_mod_revision, base)
            m.max_mod_revision = rel(m.max_mod_revision, base)
            m.min_create_revision = rel(m.min_create_revision, base)
            m.max_create_revision = rel(m.max_create_revision, base)
        elif isinstance(m, pb.PutRequest):
            m.key = key(m.key)
        elif isinstance(m, pb.DeleteRangeRequest):
            m.key, m.range_end = key(m.key), end(m.range_end)
        elif isinstance(m, pb.Compare):
            m.key, m.range_end = key(m.key), end(m.range_end)
            field, value = betterproto2.which_one_of(m, "target_union")
            if field in ("create_revision", "mod_revision"):
                setattr(m, field, rel(value, base))
        elif isinstance(m, pb.CompactionRequest):
            m.revision = rel(m.revision, base)
    return out


def relativize(outcome: Any, prefix: bytes, base: int) -> Any:
    """``normalize(outcome)`` with revisions relative to ``base`` and ``prefix`` stripped."""
    out = normalize(outcome)
    if isinstance(out, Failure):
        return out
    shift = base - 1
    for m in walk_messages(out):
        if isinstance(m, pb.ResponseHeader) and m.revision > 0:
            m.revision -= shift
        elif isinstance(m, mvccpb.KeyValue):
            if m.create_revision > 0:
                m.create_revision -= shift
            if m.mod_revision > 0:
                m.mod_revision -= shift
            if m.key.startswith(prefix):
                m.key = b"<p>" + m.key[len(prefix) :]
    return out


# ---------------------------------------------------------------------------------------------
# sort ties (R11: "sorting compares only the target field (ties in unspecified order)")


def _sort_value(kv: mvccpb.KeyValue, target: int) -> Any:
    return {
        1: kv.version,
        2: kv.create_revision,
        3: kv.mod_revision,
        4: kv.value,
    }[target]


def _canonical_ties(request: pb.RangeRequest, response: pb.RangeResponse) -> None:
    """Order kvs with equal sort values by key; blank the last run's identity if it was cut.

    With a non-KEY sort target, kvs that tie may come in any order (R11), and when ``limit``
    cuts through a run of ties either member may be returned; only the sort values are
    specified there.
    """
    target = int(request.sort_target)
    if target not in (1, 2, 3, 4) or not response.kvs:
        return
    runs: list[list[mvccpb.KeyValue]] = []
    for kv in response.kvs:
        if runs and _sort_value(runs[-1][0], target) == _sort_value(kv, target):
            runs[-1].append(kv)
        else:
            runs.append([kv])
    for run in runs:
        run.sort(key=lambda kv: kv.key)
    if response.more:
        field = _TARGET_FIELD[target]
        runs[-1] = [mvccpb.KeyValue(**{field: _sort_value(kv, target)}) for kv in runs[-1]]
    response.kvs = [kv for run in runs for kv in run]


_TARGET_FIELD = {1: "version", 2: "create_revision", 3: "mod_revision", 4: "value"}


def canonical(request: Any, outcome: Any) -> Any:
    """Apply ``_canonical_ties`` to every (RangeRequest, RangeResponse) pair in ``outcome``."""
    if isinstance(outcome, Failure):
        return outcome
    if isinstance(request, pb.RangeRequest) and isinstance(outcome, pb.RangeResponse):
        _canonical_ties(request, outcome)
    elif isinstance(request, pb.TxnRequest) and isinstance(outcome, pb.TxnResponse):
        ops = request.success if outcome.succeeded else request.failure
        for op, resp in zip(ops, outcome.responses, strict=False):
            if op.request_range is not None and resp.response_range is not None:
                _canonical_ties(op.request_range, resp.response_range)
            elif op.request_txn is not None and resp.response_txn is not None:
                canonical(op.request_txn, resp.response_txn)
    return outcome


# ---------------------------------------------------------------------------------------------
# where etcd 3.4 is not the oracle


def _bad_sort(r: pb.RangeRequest) -> bool:
    return int(r.sort_order) not in (0, 1, 2) or int(r.sort_target) not in (0, 1, 2, 3, 4)


def contract_outcome(kind: str, request: Any) -> Failure | None:
    """The contract's answer where etcd 3.4 answers differently, else None (etcd decides).

    - R13 ("Out-of-enum sort_order/sort_target -> INVALID_ARGUMENT `etcdserver: invalid sort
      option`"): etcd 3.4 does not validate the sort enums (it answers as if sorting by key);
      3.5+ does, after the empty-key check (checkRangeRequest). Generated Txns never carry bad
      sort options (their error precedence would need etcd 3.5's checkTxnRequest); a
      separate test covers X16's "bad sort options inside ops".
    """
    if kind == "range" and request.key and _bad_sort(request):
        return SORT_OPTION_ERROR
    return None


# ---------------------------------------------------------------------------------------------
# strategies


def weighted(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int
) -> st.SearchStrategy[Any]:
    """``rare`` about once in ``one_in`` draws, else ``common``.

    Hypothesis favours the bounds of integer ranges (and so the first and last elements of
    sampled_from), so the rare branch sits at a middle value, and lists below keep important
    choices away from the middle-only positions or repeat them.
    """
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in // 2 else common)


suffixes = st.sampled_from(SUFFIXES)
keys = weighted(suffixes, st.just(EMPTY_KEY), 25)
# inside txns: fewer keys (so duplicate-key conflicts, X14/X15, are common) and rarer empty keys
txn_keys = weighted(st.sampled_from([b"a", b"b", b"c", b"b/x"]), st.just(EMPTY_KEY), 80)
_RANGE_ENDS = [b"", FROM_KEY, b"c", PREFIX_END, b"b/x", FROM_KEY, b"\xff", b"a", PREFIX_END]
range_ends = st.sampled_from([*_RANGE_ENDS, b"a\x00", b"d", FROM_KEY, b"b", b"", b""])
values = st.sampled_from(VALUES)
# mostly early revisions of the example (historical, possibly compacted), some in the future
rel_revs = st.sampled_from([0, 1, 2, 3, -1, 4, 1, 2, 5, 3, 6, 1, 2, 9, 14])
filter_revs = weighted(st.just(0), st.integers(1, 12), 3)
limits = st.sampled_from([0, 0, 1, 2, 3, -1])
sort_orders = weighted(st.sampled_from([0, 0, 1, 2]), st.sampled_from([3, 7]), 40)
sort_targets = weighted(st.sampled_from([0, 0, 1, 2, 3, 4]), st.sampled_from([5, 9]), 40)


def range_requests(*, bad_sort: bool, in_txn: bool = False) -> st.SearchStrategy[pb.RangeRequest]:
    return st.builds(
        pb.RangeRequest,
        key=txn_keys if in_txn else keys,
        range_end=range_ends,
        limit=limits,
        revision=weighted(st.just(0), rel_revs, 2),
        sort_order=sort_orders if bad_sort else st.sampled_from([0, 0, 1, 2]),
        sort_target=sort_targets if bad_sort else st.sampled_from([0, 0, 1, 2, 3, 4]),
        serializable=st.booleans(),
        keys_only=weighted(st.just(False), st.just(True), 4),
        count_only=weighted(st.just(False), st.just(True), 5),
        min_mod_revision=filter_revs,
        max_mod_revision=filter_revs,
        min_create_revision=filter_revs,
        max_create_revision=filter_revs,
    )


def put_requests(*, in_txn: bool = False) -> st.SearchStrategy[pb.PutRequest]:
    rare = 30 if in_txn else 8
    return st.builds(
        pb.PutRequest,
        key=txn_keys if in_txn else keys,
        value=values,
        lease=weighted(st.just(0), st.sampled_from(NO_SUCH_LEASES), rare * 2),
        prev_kv=st.booleans(),
        ignore_value=weighted(st.just(False), st.just(True), rare),
        ignore_lease=weighted(st.just(False), st.just(True), rare),
    )


def delete_requests(*, in_txn: bool = False) -> st.SearchStrategy[pb.DeleteRangeRequest]:
    return st.builds(
        pb.DeleteRangeRequest,
        key=txn_keys if in_txn else keys,
        range_end=range_ends,
        prev_kv=st.booleans(),
    )


_OPERANDS: dict[str, st.SearchStrategy[Any]] = {
    "version": st.integers(0, 3),
    "create_revision": st.one_of(st.just(0), st.integers(1, 12)),
    "mod_revision": st.one_of(st.just(0), st.integers(1, 12)),
    "value": values,
    "lease": st.sampled_from([0, 0, 7]),
}
_TARGET_OPERAND = {0: "version", 1: "create_revision", 2: "mod_revision", 3: "value", 4: "lease"}


@st.composite
def compares(draw: st.DrawFn) -> pb.Compare:
    target = draw(st.sampled_from([0, 1, 2, 3, 4]))
    # X05: a oneof not matching the target compares against 0 / empty
    field = draw(weighted(st.just(_TARGET_OPERAND[target]), st.sampled_from(list(_OPERANDS)), 8))
    return pb.Compare(
        result=pb.CompareCompareResult(draw(st.sampled_from([0, 1, 2, 3]))),
        target=pb.CompareCompareTarget(target),
        key=draw(txn_keys),
        range_end=draw(weighted(st.just(b""), range_ends, 4)),
        **{field: draw(_OPERANDS[field])},
    )


def request_ops(depth: int) -> st.SearchStrategy[pb.RequestOp]:
    choices = [
        range_requests(bad_sort=False, in_txn=True).map(lambda r: pb.RequestOp(request_range=r)),
        put_requests(in_txn=True).map(lambda r: pb.RequestOp(request_put=r)),
        put_requests(in_txn=True).map(lambda r: pb.RequestOp(request_put=r)),
        delete_requests(in_txn=True).map(lambda r: pb.RequestOp(request_delete_range=r)),
    ]
    if depth < 2:
        choices.append(txn_requests(depth + 1).map(lambda r: pb.RequestOp(request_txn=r)))
    return weighted(st.one_of(*choices), st.just(pb.RequestOp()), 40)  # X16: empty op


def txn_requests(depth: int = 0) -> st.SearchStrategy[pb.TxnRequest]:
    size = 3 if depth == 0 else 2
    return st.builds(
        pb.TxnRequest,
        compare=st.lists(compares(), max_size=size),
        success=st.lists(request_ops(depth), max_size=size),
        failure=st.lists(request_ops(depth), max_size=size),
    )


def _big(n: int, where: str) -> pb.TxnRequest:
    get = pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))
    cmp = pb.Compare(key=b"a", target=pb.CompareCompareTarget.VERSION, version=0)
    if where == "compare":
        return pb.TxnRequest(compare=[cmp] * n)
    if where == "success":
        return pb.TxnRequest(success=[get] * n)
    return pb.TxnRequest(failure=[get] * n)


# X13: 129 ops fail whatever the list; 128 is still fine (max-txn-ops cannot be lowered on etcd).
def _big_nested(outer: int, inner: int) -> pb.TxnRequest:
    """X13: a nested txn may hold 128 minus its parent's largest list."""
    get = pb.RequestOp(request_range=pb.RangeRequest(key=b"b"))
    put = pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"nested"))
    nested = pb.RequestOp(request_txn=pb.TxnRequest(success=[get] * (inner - 1) + [put]))
    return pb.TxnRequest(success=[get] * (outer - 1) + [nested])


big_txns = st.one_of(
    st.builds(
        _big,
        st.sampled_from([MAX_TXN_OPS, MAX_TXN_OPS + 1]),
        st.sampled_from(["compare", "success", "failure"]),
    ),
    st.sampled_from([(1, 127), (1, 128), (2, 126), (2, 127), (64, 64), (64, 65)]).map(
        lambda oi: _big_nested(*oi)
    ),
)

compact_requests = st.builds(
    pb.CompactionRequest,
    revision=st.one_of(st.integers(1, 14), st.sampled_from([0, -1])),
    physical=st.booleans(),
)

Op = tuple[str, Any]


def _with_revision(request: pb.RangeRequest, revision: int) -> pb.RangeRequest:
    request.revision = revision
    return request


_OP_STRATEGIES: dict[str, st.SearchStrategy[Op]] = {
    "put": put_requests().map(lambda r: ("put", r)),
    "range": range_requests(bad_sort=True).map(lambda r: ("range", r)),
    "delete_range": delete_requests().map(lambda r: ("delete_range", r)),
    "txn": txn_requests().map(lambda r: ("txn", r)),
    "big_txn": big_txns.map(lambda r: ("txn", r)),
    "compact": compact_requests.map(lambda r: ("compact", r)),
    "range_recent": st.tuples(range_requests(bad_sort=False), st.integers(0, 4)).map(
        lambda rd: ("range_recent", _with_revision(rd[0], rd[1]))
    ),
    "compact_recent": st.builds(
        pb.CompactionRequest, revision=st.integers(0, 3), physical=st.booleans()
    ).map(lambda r: ("compact_recent", r)),
}
#: relative frequencies of the request kinds in a sequence
_OP_WEIGHTS = {
    "put": 6,
    "range": 7,
    "delete_range": 3,
    "txn": 7,
    "big_txn": 1,
    "compact": 1,
    "range_recent": 3,
    "compact_recent": 2,
}

ops_lists = st.lists(
    st.sampled_from([k for k, w in _OP_WEIGHTS.items() for _ in range(w)]).flatmap(
        _OP_STRATEGIES.__getitem__
    ),
    min_size=1,
    max_size=12,
)


# ---------------------------------------------------------------------------------------------
# the pair of targets


@dataclass(repr=False)
class Pair:
    runner: asyncio.Runner
    etcd: KvDriver
    gw: KvDriver
    examples: Iterator[int]
    first_divergence: str | None = None

    def __repr__(self) -> str:  # shown in hypothesis' failing-case report: keep it short
        return f"Pair(etcd vs {self.gw.name})"


@pytest.fixture(scope="module", params=["store", "grpc", "grpc-cosmos"])
def pair(
    request: pytest.FixtureRequest,
    server_factory: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    """A fresh etcd (revision 1) and a fresh etcdgw (revision 1), driven from one event loop."""
    etcd_server: Server = server_factory("etcd")
    runner = asyncio.Runner()

    async def open_drivers() -> tuple[KvDriver, KvDriver]:
        etcd = GrpcDriver.connect(etcd_server)
        if request.param == "store":
            gw: KvDriver = await StoreDriver.open(tmp_path_factory.mktemp("store"))
        else:
            server = "etcdgw_server" if request.param == "grpc" else "etcdgw_cosmos_server"
            gw = GrpcDriver.connect(request.getfixturevalue(server))
        return etcd, gw

    etcd, gw = runner.run(open_drivers())
    try:
        yield Pair(runner, etcd, gw, itertools.count(1))
    finally:
        runner.run(etcd.close())
        runner.run(gw.close())
        runner.close()


async def call(driver: KvDriver, kind: str, request: Any) -> Any:
    method = {"compact_recent": "compact", "range_recent": "range"}.get(kind, kind)
    return await getattr(driver, method)(request)


async def head_revision(driver: KvDriver, prefix: bytes) -> int:
    """Current revision: a single-key Range of an absent key (R15)."""
    resp = await driver.range(pb.RangeRequest(key=prefix + b"<absent>"))
    assert isinstance(resp, pb.RangeResponse), resp
    return resp.header.revision


def diverged(p: Pair, report: str) -> NoReturn:
    """Fail the example; the first divergence is kept and repeated by every later example.

    Examples share the two servers, so once they disagree (a compaction point, a revision) later
    examples may fail for that old reason. Rather than let shrinking chase such an echo, every
    later example fails with the first divergence's full report, which names the request,
    both answers and the steps leading to it. (One raise site: hypothesis treats all of these
    as the same error.)
    """
    if p.first_divergence is None:
        p.first_divergence = report
    else:
        report = (
            "the servers diverged in an earlier example; that first divergence was:\n"
            + p.first_divergence
        )
    raise AssertionError(report)


async def run_example(p: Pair, ops: list[Op]) -> None:
    if p.first_divergence is not None:
        diverged(p, "")
    n = next(p.examples)
    prefix = f"/diff/{n:06d}/".encode()
    base_e = await head_revision(p.etcd, prefix)
    base_g = await head_revision(p.gw, prefix)
    trace = [f"prefix {prefix!r} (shown as <p>); start revision etcd {base_e}, etcdgw {base_g}"]
    if base_e != base_g:
        diverged(p, f"start revisions differ: {trace[0]}")
    # last, a Range over the whole prefix: the state and revision the example left behind
    steps = [*ops, ("range", pb.RangeRequest(key=b"", range_end=PREFIX_END))]
    for i, (kind, template) in enumerate(steps):
        if kind == "compact_recent":
            cur_e = await head_revision(p.etcd, prefix)
            cur_g = await head_revision(p.gw, prefix)
            req_e = pb.CompactionRequest(cur_e - template.revision, template.physical)
            req_g = pb.CompactionRequest(cur_g - template.revision, template.physical)
        else:
            req_e = materialize(template, prefix, base_e)
            req_g = materialize(template, prefix, base_g)
        if kind == "range_recent":
            req_e.revision = await head_revision(p.etcd, prefix) - template.revision
            req_g.revision = await head_revision(p.gw, prefix) - template.revision
        expected = contract_outcome(kind, req_g)
        if expected is None:
            got_e = canonical(template, relativize(await call(p.etcd, kind, req_e), prefix, base_e))
            source = "etcd 3.4"
        else:
            got_e = expected
            source = "contract"
        got_g = canonical(template, relativize(await call(p.gw, kind, req_g), prefix, base_g))
        if isinstance(got_g, Failure):
            event(f"{kind}: {got_g.message}")
        elif isinstance(got_g, pb.TxnResponse):
            event(f"txn: succeeded={got_g.succeeded}")
        else:
            event(f"{kind}: ok")
        trace.append(f"#{i} {kind} {template!r}\n    {source}: {got_e!r}\n    etcdgw: {got_g!r}")
        note(trace[-1])
        if got_g != got_e:
            diverged(
                p,
                f"step #{i} {kind} differs (revisions relative: 1 = example start)\n"
                f"request (etcdgw, absolute revisions): {req_g!r}\n"
                f"{source}: {got_e!r}\n"
                f"etcdgw  : {got_g!r}\n"
                "steps of this example:\n" + "\n".join(trace),
            )


@settings(
    max_examples=int(os.environ.get("ETCDGW_DIFF_EXAMPLES", "100")),
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(ops=ops_lists)
def test_kv_sequences_match_etcd(pair: Pair, ops: list[Op]) -> None:
    pair.runner.run(run_example(pair, ops))


def test_invalid_sort_option_inside_txn(pair: Pair) -> None:
    """X16: bad sort options inside Txn ops fail as R13 (etcd 3.4 does not check: contract wins).

    Only etcdgw is asked: etcd 3.4 would run (and possibly apply) the txn.
    """

    async def go() -> None:
        prefix = f"/diff/sort-{next(pair.examples):06d}/".encode()
        base = await head_revision(pair.gw, prefix)
        for order, target in ((7, 0), (0, 9), (3, 1)):
            bad = pb.RangeRequest(key=b"a", sort_order=order, sort_target=target)
            txn = pb.TxnRequest(
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"x")),
                    pb.RequestOp(request_range=bad),
                ]
            )
            got = await pair.gw.txn(materialize(txn, prefix, base))
            assert got == SORT_OPTION_ERROR, (order, target, got)
        assert await head_revision(pair.gw, prefix) == base  # nothing applied

    pair.runner.run(go())
