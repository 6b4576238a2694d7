"""The pure MVCC core against a plain model (hypothesis RuleBasedStateMachine).

System under test: a Replica driven exactly the way etcdgw/store.py does it, synchronously:
- static request checks at call time (check_put_request, check_delete_request,
  check_txn_request); read-only txns answered at once by Store.txn against the replica;
- every other request of a "batch" evaluated in order by Store._evaluate on ONE Overlay
  (group commit: request i sees requests < i), then the batch applied to the replica
  (Replica.apply per revision, Replica.compact for the last compaction), as _commit_batch does
  after a successful backend commit;
- reads through Store.range.
Requests reach the core after a wire round trip (parse(bytes(req))), as from a client.

The model is written from the contract (M, K, R, P, D, X, C, H lines) and etcd's documented
evaluation order, without calling etcdgw code: one dict {key: (value, create, mod, version,
lease)} per revision.
"""

from __future__ import annotations

from typing import Any

import betterproto2
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from etcdgw import errors
from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb
from etcdgw.errors import EtcdError
from etcdgw.mvcc.overlay import Overlay
from etcdgw.mvcc.replica import Replica
from etcdgw.mvcc.txn import (
    check_delete_request,
    check_put_request,
    check_txn_request,
    is_read_only,
)
from etcdgw.store import Store, _Queued

Row = tuple[bytes, int, int, int, int]  # value, create_revision, mod_revision, version, lease
State = dict[bytes, Row]

CLUSTER_ID, MEMBER_ID = 0xC1, 0x3E3
LEASES = frozenset({7, 8})  # live leases; 99 is unknown
KEYS = [
    b"a", b"b", b"c", b"d", b"e", b"f",
    b"ab", b"ba", b"cf", b"fa",
    b"\x00", b"\xff", b"a\xff", b"\xff\xff",
]  # fmt: skip
ENDS = [b"\x00", b"b", b"c", b"d", b"f", b"ab", b"b\x00", b"\xff", b"\xff\xff", b"a"]
VALUES = [b"", b"x", b"y", b"xy", b"\x00"]
LEASE_CHOICES = [0, 0, 0, 7, 8, 99]
SWEEP_RANGES = [
    (b"\x00", b"\x00"),  # everything
    (b"b", b"d"),
    (b"c", b"\x00"),  # from-key
    (b"a", b""),  # single keys
    (b"\xff", b""),
    (b"a", b"b"),  # prefix "a"
    (b"\xff", b"\x00"),  # prefix "\xff" (K05)
]

NONE, ASCEND, DESCEND = 0, 1, 2
T_KEY, T_VERSION, T_CREATE, T_MOD, T_VALUE = 0, 1, 2, 3, 4
EQUAL, GREATER, LESS, NOT_EQUAL = 0, 1, 2, 3
C_VERSION, C_CREATE, C_MOD, C_VALUE, C_LEASE = 0, 1, 2, 3, 4
OPERAND_FIELD = {
    C_VERSION: "version",
    C_CREATE: "create_revision",
    C_MOD: "mod_revision",
    C_VALUE: "value",
    C_LEASE: "lease",
}


# -- model ------------------------------------------------------------------------------------


def in_range(k: bytes, key: bytes, end: bytes) -> bool:
    """K02-K04, K06."""
    if not end:
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


def select(state: State, key: bytes, end: bytes) -> list[bytes]:
    return sorted(k for k in state if in_range(k, key, end))


def target_of(key: bytes, row: Row, target: int) -> Any:
    value, create, mod, version, _ = row
    return (key, version, create, mod, value)[target]


def model_range(state: State, req: Any) -> tuple[list[tuple[bytes, Row]], bool, int, State]:
    """R05-R12 in etcd's order: count, limit+1 prefetch when unsorted and unfiltered,
    filters, sort, limit. Returns (kvs, more, count, candidates-after-filter)."""
    keys = select(state, req.key, req.range_end)
    count = len(keys)
    if req.count_only:
        return [], False, count, {}
    items = [(k, state[k]) for k in keys]
    filtered = bool(
        req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    )
    order, target = int(req.sort_order), int(req.sort_target)
    if req.limit > 0 and order == NONE and not filtered:
        items = items[: req.limit + 1]

    def keep(row: Row) -> bool:
        _, create, mod, _, _ = row
        return not (
            (req.max_mod_revision and mod > req.max_mod_revision)
            or (req.min_mod_revision and mod < req.min_mod_revision)
            or (req.max_create_revision and create > req.max_create_revision)
            or (req.min_create_revision and create < req.min_create_revision)
        )

    items = [(k, r) for k, r in items if keep(r)]
    if order == NONE and target != T_KEY:
        order = ASCEND
    if order != NONE:
        items.sort(key=lambda it: target_of(it[0], it[1], target), reverse=order == DESCEND)
    candidates = dict(items)
    more = False
    if req.limit > 0 and len(items) > req.limit:
        items, more = items[: req.limit], True
    return items, more, count, candidates


def header(rev: int) -> pb.ResponseHeader:
    return pb.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=rev, raft_term=1)


def kv_msg(key: bytes, row: Row, keys_only: bool = False) -> mvccpb.KeyValue:
    value, create, mod, version, lease = row
    return mvccpb.KeyValue(
        key=key,
        create_revision=create,
        mod_revision=mod,
        version=version,
        value=b"" if keys_only else value,
        lease=lease,
    )


def which(msg: Any, group: str) -> tuple[str, Any]:
    return betterproto2.which_one_of(msg, group)


class Model:
    def __init__(self) -> None:
        self.snaps: list[State] = [{}, {}]  # snaps[r] = state at revision r; r=1: empty
        self.compact_main = -1  # etcd's compactMainRev: -1 until the first compaction

    @property
    def rev(self) -> int:
        return len(self.snaps) - 1

    @property
    def latest(self) -> State:
        return self.snaps[-1]

    def commit(self, state: State) -> int:
        self.snaps.append(state)
        return self.rev

    def read_rev(self, requested: int) -> int:
        """R03, R04."""
        if requested > self.rev:
            raise errors.FUTURE_REV
        r = self.rev if requested <= 0 else requested
        if r < self.compact_main:
            raise errors.COMPACTED
        return r

    # -- static checks (done when the request arrives) ---------------------------------------

    @staticmethod
    def static_put(req: Any) -> None:
        if req.ignore_value and req.value:
            raise errors.VALUE_PROVIDED
        if req.ignore_lease and req.lease:
            raise errors.LEASE_PROVIDED

    def static_txn(self, txn: Any) -> None:
        """X13 (not generated), X16, then X14/X15 on each branch."""
        self._static_ops(txn)
        self._intervals(txn.success)
        self._intervals(txn.failure)

    def _static_ops(self, txn: Any) -> None:
        for op in (*txn.success, *txn.failure):
            kind, r = which(op, "request")
            if kind == "request_put":
                self.static_put(r)
            elif kind == "request_txn":
                self._static_ops(r)
            elif kind not in ("request_range", "request_delete_range"):
                raise errors.KEY_NOT_FOUND

    def _intervals(self, ops: Any) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
        """Keys put / ranges deleted by a list of ops, failing on a duplicate (X14, X15):
        this level's deletes are known first; nested txns' puts are checked against the
        puts and deletes collected so far (then/else of one nested txn may put one key),
        then the nested deletes join; finally this level's puts are checked against all."""
        # etcd checks a put against the literal interval [key, range_end) of each delete;
        # for a from-key delete (range_end "\x00") that interval is empty (inverted), so a
        # from-key delete never conflicts with a put (same for key >= range_end).
        dels = [
            (r.key, r.range_end)
            for kind, r in (which(op, "request") for op in ops)
            if kind == "request_delete_range" and r.range_end != b"\x00"
        ]
        puts: set[bytes] = set()

        def covered(k: bytes) -> bool:
            return any(in_range(k, a, b) for a, b in dels)

        for kind, r in (which(op, "request") for op in ops):
            if kind != "request_txn":
                continue
            then_puts, then_dels = self._intervals(r.success)
            else_puts, else_dels = self._intervals(r.failure)
            for k in then_puts:
                if k in puts or covered(k):
                    raise errors.DUPLICATE_KEY
                puts.add(k)
            for k in else_puts:
                if (k in puts and k not in then_puts) or covered(k):
                    raise errors.DUPLICATE_KEY
                puts.add(k)
            dels += then_dels + else_dels
        for kind, r in (which(op, "request") for op in ops):
            if kind != "request_put":
                continue
            if r.key in puts or covered(r.key):
                raise errors.DUPLICATE_KEY
            puts.add(r.key)
        return puts, dels

    @staticmethod
    def read_only(txn: Any) -> bool:
        for op in (*txn.success, *txn.failure):
            kind, r = which(op, "request")
            if kind in ("request_put", "request_delete_range"):
                return False
            if kind == "request_txn" and not Model.read_only(r):
                return False
        return True

    # -- writes (after the static checks) -----------------------------------------------------

    def put(self, req: Any) -> pb.PutResponse:
        if req.lease and req.lease not in LEASES:  # P03 before P06
            raise errors.LEASE_NOT_FOUND
        st = dict(self.latest)
        prev = self._put(st, req, self.rev + 1)
        rev = self.commit(st)
        resp = pb.PutResponse(header=header(rev))
        if req.prev_kv and prev is not None:
            resp.prev_kv = kv_msg(req.key, prev)
        return resp

    @staticmethod
    def _put(st: State, req: Any, rev: int) -> Row | None:
        prev = st.get(req.key)
        value, lease = req.value, req.lease
        if req.ignore_value or req.ignore_lease:
            if prev is None:
                raise errors.KEY_NOT_FOUND
            if req.ignore_value:
                value = prev[0]
            if req.ignore_lease:
                lease = prev[4]
        if prev is None:
            st[req.key] = (value, rev, rev, 1, lease)
        else:
            st[req.key] = (value, prev[1], rev, prev[3] + 1, lease)
        return prev

    def delete(self, req: Any) -> pb.DeleteRangeResponse:
        st = dict(self.latest)
        doomed = select(st, req.key, req.range_end)
        resp = pb.DeleteRangeResponse(deleted=len(doomed))
        if req.prev_kv:
            resp.prev_kvs = [kv_msg(k, st[k]) for k in doomed]
        for k in doomed:
            del st[k]
        resp.header = header(self.commit(st) if doomed else self.rev)  # H07
        return resp

    def compact(self, req: Any) -> pb.CompactionResponse:
        """C02, C03, C06 (etcd's updateCompactRev)."""
        if req.revision <= self.compact_main:
            raise errors.COMPACTED
        if req.revision > self.rev:
            raise errors.FUTURE_REV
        self.compact_main = req.revision
        return pb.CompactionResponse(header=header(self.rev))

    # -- txn ---------------------------------------------------------------------------------

    def compare(self, state: State, c: Any) -> bool:
        """X04-X08."""
        target, result = int(c.target), int(c.result)
        field, operand = which(c, "target_union")
        if field != OPERAND_FIELD[target]:  # X05
            operand = None
        if operand is None:
            operand = b"" if target == C_VALUE else 0
        keys = select(state, c.key, c.range_end)
        if not keys:
            if target == C_VALUE:  # X06
                return False
            rows: list[Row] = [(b"", 0, 0, 0, 0)]
        else:
            rows = [state[k] for k in keys]
        for value, create, mod, version, lease in rows:
            actual = (version, create, mod, value, lease)[target]
            ok = {
                EQUAL: actual == operand,
                NOT_EQUAL: actual != operand,
                GREATER: actual > operand,
                LESS: actual < operand,
            }[result]
            if not ok:
                return False
        return True

    def decide(self, state: State, txn: Any) -> tuple[bool, list[Any]]:
        """The branch of this txn and of every nested txn on the executed path, all against
        the state before the txn (etcd's compareToPath)."""
        ok = all(self.compare(state, c) for c in txn.compare)
        nested = [
            self.decide(state, r)
            for kind, r in (which(op, "request") for op in (txn.success if ok else txn.failure))
            if kind == "request_txn"
        ]
        return ok, nested

    def _walk(self, txn: Any, path: tuple[bool, list[Any]], visit: Any) -> None:
        ok, nested = path
        it = iter(nested)
        for op in txn.success if ok else txn.failure:
            kind, r = which(op, "request")
            if kind == "request_txn":
                self._walk(r, next(it), visit)
            else:
                visit(kind, r)

    def txn(self, txn: Any) -> pb.TxnResponse:
        pre = self.latest
        begin = self.rev
        path = self.decide(pre, txn)

        def check_put(kind: str, r: Any) -> None:  # X17, pass 1
            if kind != "request_put":
                return
            if (r.ignore_value or r.ignore_lease) and r.key not in pre:
                raise errors.KEY_NOT_FOUND
            if r.lease and r.lease not in LEASES:
                raise errors.LEASE_NOT_FOUND

        def check_range(kind: str, r: Any) -> None:  # X17, pass 2
            if kind != "request_range" or r.revision == 0:
                return
            if r.revision > begin:
                raise errors.FUTURE_REV
            if r.revision < self.compact_main:
                raise errors.COMPACTED

        self._walk(txn, path, check_put)
        self._walk(txn, path, check_range)

        run = _TxnRun(self, begin, dict(pre))
        resp = run.execute(txn, path)
        rev = self.commit(run.st) if run.changed else begin  # H08
        resp.header = header(rev)
        return resp


class _TxnRun:
    """X09-X12: ops in order, each seeing the earlier ones; all changes at begin + 1."""

    def __init__(self, model: Model, begin: int, st: State) -> None:
        self.model = model
        self.begin = begin
        self.st = st
        self.changed = False

    @property
    def cur(self) -> int:
        return self.begin + 1 if self.changed else self.begin

    def execute(self, txn: Any, path: tuple[bool, list[Any]]) -> pb.TxnResponse:
        ok, nested = path
        it = iter(nested)
        responses = []
        for op in txn.success if ok else txn.failure:
            kind, r = which(op, "request")
            if kind == "request_range":
                state = self.st if r.revision <= 0 else self.model.snaps[r.revision]
                kvs, more, count, _ = model_range(state, r)
                responses.append(
                    pb.ResponseOp(
                        response_range=pb.RangeResponse(
                            header=pb.ResponseHeader(revision=self.cur),
                            kvs=[kv_msg(k, row, r.keys_only) for k, row in kvs],
                            more=more,
                            count=count,
                        )
                    )
                )
            elif kind == "request_put":
                prev = Model._put(self.st, r, self.begin + 1)
                self.changed = True
                put = pb.PutResponse(header=pb.ResponseHeader(revision=self.begin + 1))
                if r.prev_kv and prev is not None:
                    put.prev_kv = kv_msg(r.key, prev)
                responses.append(pb.ResponseOp(response_put=put))
            elif kind == "request_delete_range":
                doomed = select(self.st, r.key, r.range_end)
                dr = pb.DeleteRangeResponse(deleted=len(doomed))
                if r.prev_kv:
                    dr.prev_kvs = [kv_msg(k, self.st[k]) for k in doomed]
                for k in doomed:
                    del self.st[k]
                if doomed:
                    self.changed = True
                dr.header = pb.ResponseHeader(revision=self.cur)
                responses.append(pb.ResponseOp(response_delete_range=dr))
            else:
                sub = self.execute(r, next(it))
                sub.header = pb.ResponseHeader()  # nested: empty header, as etcd sends
                responses.append(pb.ResponseOp(response_txn=sub))
        return pb.TxnResponse(succeeded=ok, responses=responses)


# -- the system under test, driven like store.py ------------------------------------------------


def sync(coro: Any) -> Any:
    """Run a coroutine that never suspends (Store.range, read-only Store.txn)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise AssertionError("coroutine suspended")


class Sut:
    def __init__(self) -> None:
        self.replica = Replica()
        self.store = Store(None, self.replica, CLUSTER_ID, MEMBER_ID, 128)  # type: ignore[arg-type]
        self.store.lease_exists = LEASES.__contains__

    def batch(self, reqs: list[tuple[str, Any]]) -> list[bytes | EtcdError]:
        store = self.store
        results: list[bytes | EtcdError | None] = [None] * len(reqs)
        queued: list[int] = []
        for i, (kind, req) in enumerate(reqs):  # Store.put/delete_range/txn/compact
            try:
                if kind == "put":
                    check_put_request(req)
                elif kind == "delete":
                    check_delete_request(req)
                elif kind == "txn":
                    check_txn_request(req, store.max_txn_ops)
                    if is_read_only(req):
                        results[i] = sync(store.txn(req))
                        continue
            except EtcdError as e:
                results[i] = e
                continue
            queued.append(i)
        # Store._commit_batch, with a backend commit that succeeds.
        ov = Overlay(self.replica)
        for i in queued:
            kind, req = reqs[i]
            try:
                results[i] = store._evaluate(ov, _Queued(kind, req, None))[0]  # type: ignore[arg-type]
            except EtcdError as e:
                results[i] = e
        for rev, changes in ov.revisions:
            self.replica.apply(rev, changes)
        if ov.compactions:
            self.replica.compact(ov.compactions[-1])
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def range(self, req: Any) -> bytes:
        return sync(self.store.range(req))  # type: ignore[no-any-return]


# -- a small independent protobuf reader for the (many) sweep reads ---------------------------


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return result, i
        shift += 7


def _fields(b: bytes) -> list[tuple[int, Any]]:
    """(field, value) pairs; asserts canonical form: ascending field numbers, no zero
    varints, no empty length-delimited scalars outside embedded messages."""
    out: list[tuple[int, Any]] = []
    i, last = 0, 0
    while i < len(b):
        k, i = _uvarint(b, i)
        f, wt = k >> 3, k & 7
        assert f >= last, f"field {f} after {last}: not canonical"
        last = f
        if wt == 0:
            v, i = _uvarint(b, i)
            assert v != 0, f"zero varint field {f} emitted"
            if v >= 1 << 63:
                v -= 1 << 64
        elif wt == 2:
            n, i = _uvarint(b, i)
            v = b[i : i + n]
            assert len(v) == n
            i += n
        else:
            raise AssertionError(f"wire type {wt}")
        out.append((f, v))
    return out


def decode_kv(b: bytes) -> tuple[bytes, Row]:
    d = dict(_fields(b))
    assert d.get(1), "KeyValue without key"
    return d[1], (d.get(5, b""), d.get(2, 0), d.get(3, 0), d.get(4, 0), d.get(6, 0))


def decode_range(b: bytes) -> tuple[dict[int, int], list[tuple[bytes, Row]], bool, int]:
    hdr: dict[int, int] = {}
    kvs = []
    more, count = False, 0
    for f, v in _fields(b):
        if f == 1:
            hdr = dict(_fields(v))
        elif f == 2:
            kvs.append(decode_kv(v))
        elif f == 3:
            more = bool(v)
        elif f == 4:
            count = v
        else:
            raise AssertionError(f"RangeResponse field {f}")
    return hdr, kvs, more, count


def header_fields(rev: int) -> dict[int, int]:
    return {1: CLUSTER_ID, 2: MEMBER_ID, 3: rev, 4: 1}


def check_range_result(
    got: list[tuple[bytes, Row]],
    want: list[tuple[bytes, Row]],
    candidates: State,
    req: Any,
) -> None:
    """Exact for KEY sorting; for other targets ties may come in any order (R11), so the
    sort-target sequence must match and every kv must be a distinct filtered candidate."""
    target = int(req.sort_target)
    assert len({k for k, _ in got}) == len(got), got
    full = []
    for k, row in got:
        assert k in candidates, (k, got, want)
        cand = candidates[k]
        expect_row = (b"", *cand[1:]) if req.keys_only else cand
        assert row == expect_row, (k, row, expect_row)
        full.append(target_of(k, cand, target))
    assert full == [target_of(k, r, target) for k, r in want], (got, want)


# -- strategies ---------------------------------------------------------------------------------
# Built once (building hypothesis strategies per step is what costs time). Revision-valued
# fields are drawn as raw numbers in 0..RAW and mapped onto the model's current revisions by
# localize(), so that most of them are meaningful whatever the revision is.

RAW = 1000
raw_rev = st.one_of(st.just(0), st.just(0), st.integers(1, RAW))
keys_st = st.sampled_from(KEYS)
ends_st = st.one_of(st.just(b""), st.just(b""), st.sampled_from(ENDS))
delete_ends_st = st.sampled_from([b""] * len(ENDS) * 2 + ENDS)


@st.composite
def _put_st(draw: Any) -> pb.PutRequest:
    ignore_value = draw(st.integers(0, 9)) == 0
    ignore_lease = draw(st.integers(0, 9)) == 0
    value = draw(st.sampled_from(VALUES))
    lease = draw(st.sampled_from(LEASE_CHOICES))
    # mostly valid flag combinations; sometimes P05's errors
    if ignore_value and draw(st.integers(0, 5)):
        value = b""
    if ignore_lease and draw(st.integers(0, 5)):
        lease = 0
    return pb.PutRequest(
        key=draw(keys_st),
        value=value,
        lease=lease,
        prev_kv=draw(st.booleans()),
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


put_st = _put_st()
delete_st = st.builds(
    pb.DeleteRangeRequest, key=keys_st, range_end=delete_ends_st, prev_kv=st.booleans()
)
# Ranges inside txns: KEY order only (so the response is exact), any revision.
txn_range_st = st.builds(
    pb.RangeRequest,
    key=keys_st,
    range_end=ends_st,
    limit=st.sampled_from([0, 0, 1, 2]),
    revision=st.one_of(st.just(0), raw_rev),
    sort_order=st.sampled_from([pb.RangeRequestSortOrder(i) for i in (0, 0, 1, 2)]),
    keys_only=st.booleans(),
    count_only=st.sampled_from([False, False, False, True]),
)


@st.composite
def _compare_st(draw: Any) -> pb.Compare:
    target = draw(st.sampled_from([C_VERSION, C_CREATE, C_MOD, C_VALUE, C_LEASE]))
    field = OPERAND_FIELD[target]
    if draw(st.integers(0, 6)) == 0:  # X05: a oneof member that does not match the target
        field = draw(st.sampled_from(sorted(OPERAND_FIELD.values())))
    operand: Any
    if field == "value":
        operand = draw(st.sampled_from(VALUES))
    elif field == "lease":
        operand = draw(st.sampled_from([0, 7, 8, 99]))
    elif field == "version":
        operand = draw(st.integers(0, 4))
    else:
        operand = draw(raw_rev)  # localized
    return pb.Compare(
        key=draw(keys_st),
        range_end=draw(st.one_of(st.just(b""), st.just(b""), st.just(b""), st.sampled_from(ENDS))),
        target=pb.CompareCompareTarget(target),
        result=pb.CompareCompareResult(draw(st.sampled_from([EQUAL, GREATER, LESS, NOT_EQUAL]))),
        **{field: operand},
    )


compare_st = _compare_st()


def _op_st(depth: int) -> st.SearchStrategy[pb.RequestOp]:
    # weighted by repetition in sampled_from (one_of would treat repeated branches as one)
    kinds = ["range"] * 2 + ["put"] * 3 + ["delete"] + (["txn"] if depth > 0 else [])
    by_kind = {
        "range": st.builds(pb.RequestOp, request_range=txn_range_st),
        "put": st.builds(pb.RequestOp, request_put=put_st),
        "delete": st.builds(pb.RequestOp, request_delete_range=delete_st),
        "empty": st.builds(pb.RequestOp),  # X16: an op with nothing set, rarely
    }
    if depth > 0:
        by_kind["txn"] = st.builds(pb.RequestOp, request_txn=_txn_st(depth - 1))
    return st.sampled_from(kinds * 12 + ["empty"]).flatmap(by_kind.__getitem__)


def _txn_st(depth: int) -> st.SearchStrategy[pb.TxnRequest]:
    ops = st.lists(_op_st(depth), max_size=3 if depth == 2 else 2)
    return st.builds(
        pb.TxnRequest, compare=st.lists(compare_st, max_size=3), success=ops, failure=ops
    )


txn_st = _txn_st(2)
_batch_kinds = {
    "put": put_st,
    "delete": delete_st,
    "txn": txn_st,
    "compact": st.builds(pb.CompactionRequest, revision=raw_rev),
}
batch_st = st.lists(
    st.sampled_from(["put"] * 5 + ["delete"] + ["txn"] * 4 + ["compact"]).flatmap(
        lambda kind: st.tuples(st.just(kind), _batch_kinds[kind])
    ),
    min_size=1,
    max_size=4,
)
# min/max filters: mostly unset
bound_st = st.sampled_from([0] * 5 + [1]).flatmap(
    lambda z: st.integers(1, RAW) if z else st.just(0)
)
WIDE = [(b"\x00", b"\x00"), (b"a", b"\x00"), (b"a", b"g"), (b"b", b"\xff"), (b"\x00", b"e")]
range_bounds_st = st.one_of(
    st.sampled_from(WIDE),
    st.tuples(keys_st, st.one_of(st.just(b""), st.sampled_from(ENDS))),
)
range_query_st = st.builds(
    lambda bounds, **kw: pb.RangeRequest(key=bounds[0], range_end=bounds[1], **kw),
    range_bounds_st,
    limit=st.sampled_from([0, 1, 1, 2, 3, 5]),
    revision=st.integers(0, RAW),
    sort_order=st.sampled_from([pb.RangeRequestSortOrder(i) for i in (0, 0, 1, 2)]),
    sort_target=st.sampled_from([pb.RangeRequestSortTarget(i) for i in range(5)]),
    keys_only=st.booleans(),
    count_only=st.sampled_from([False] * 5 + [True]),
    min_mod_revision=bound_st,
    max_mod_revision=bound_st,
    min_create_revision=bound_st,
    max_create_revision=bound_st,
)


def _some_rev(n: int, rev: int) -> int:
    """0 stays 0 ("unset"/latest); otherwise 1..rev+1 (rev+1: a future revision)."""
    return 0 if n == 0 else 1 + n % (rev + 1)


def localize_txn(txn: Any, rev: int) -> None:
    for c in txn.compare:
        field, operand = which(c, "target_union")
        if field in ("create_revision", "mod_revision"):
            setattr(c, field, _some_rev(operand, rev))
    for op in (*txn.success, *txn.failure):
        kind, r = which(op, "request")
        if kind == "request_range":
            r.revision = _some_rev(r.revision, rev)
        elif kind == "request_txn":
            localize_txn(r, rev)


def localize_batch(reqs: list[tuple[str, Any]], rev: int, compact_main: int) -> None:
    for kind, req in reqs:
        if kind == "txn":
            localize_txn(req, rev)
        elif kind == "compact":
            # -1..rev+2, mostly at or above the compaction point
            lo = max(compact_main, 1) if req.revision % 3 else -1
            req.revision = lo + req.revision % (rev + 3 - lo)


def localize_range(req: Any, rev: int, compact_main: int) -> None:
    n = req.revision
    if n % 3 == 0 or n < 2:
        req.revision = -(n % 2)  # 0 or -1: latest
    else:
        lo = max(1, compact_main - 1)
        req.revision = lo + n % (rev + 2 - lo)  # up to rev + 1 (future)
    for f in ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision"):
        setattr(req, f, _some_rev(getattr(req, f), rev))


def wire(msg: Any) -> Any:
    """What the server would hand the store: the request after a wire round trip."""
    return type(msg).parse(bytes(msg))


RESPONSE_TYPES: dict[str, Any] = {
    "put": pb.PutResponse,
    "delete": pb.DeleteRangeResponse,
    "txn": pb.TxnResponse,
    "compact": pb.CompactionResponse,
}


# -- the state machine --------------------------------------------------------------------------


class MvccMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.sut = Sut()

    def expected(self, reqs: list[tuple[str, Any]]) -> list[Any]:
        """Requests rejected on arrival and read-only txns are answered before the queued
        writes run, in order, on one overlay."""
        m = self.model
        out: list[Any] = [None] * len(reqs)
        queued = []
        for i, (kind, req) in enumerate(reqs):
            try:
                if kind == "put":
                    m.static_put(req)
                elif kind == "txn":
                    m.static_txn(req)
                    if m.read_only(req):
                        out[i] = m.txn(req)
                        continue
            except EtcdError as e:
                out[i] = e
                continue
            queued.append(i)
        for i in queued:
            kind, req = reqs[i]
            try:
                out[i] = getattr(m, kind)(req)
            except EtcdError as e:
                out[i] = e
        return out

    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        reqs = data.draw(batch_st, label="batch")
        localize_batch(reqs, self.model.rev, self.model.compact_main)
        want = self.expected(reqs)
        got = self.sut.batch([(kind, wire(req)) for kind, req in reqs])
        for (kind, req), g, w in zip(reqs, got, want, strict=True):
            event(f"{kind}: {w.message if isinstance(w, EtcdError) else 'ok'}")
            if isinstance(w, EtcdError) or isinstance(g, EtcdError):
                assert g == w, (kind, req, g, w)
                continue
            parsed = RESPONSE_TYPES[kind].parse(g)
            assert parsed == w, (kind, req, parsed, w)
            assert g == bytes(w), (kind, req)  # canonical wire form too

    @rule(data=st.data())
    def range_query(self, data: st.DataObject) -> None:
        m = self.model
        req = data.draw(range_query_st, label="range")
        localize_range(req, m.rev, m.compact_main)
        try:
            r = m.read_rev(req.revision)
        except EtcdError as e:
            try:
                self.sut.range(wire(req))
            except EtcdError as g:
                assert g == e
            else:
                raise AssertionError(f"expected {e!r} for {req}") from None
            return
        kvs, more, count, candidates = model_range(m.snaps[r], req)
        resp = pb.RangeResponse.parse(self.sut.range(wire(req)))
        assert resp.header == header(m.rev)  # H05
        assert resp.count == count, (req, resp)
        assert resp.more == more, (req, resp, kvs)
        got = [
            (kv.key, (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease))
            for kv in resp.kvs
        ]
        check_range_result(got, kvs, candidates, req)

    @invariant()
    def every_revision_reads_like_the_model(self) -> None:
        m, sut = self.model, self.sut
        assert sut.replica.rev == m.rev
        assert max(sut.replica.compact_rev, 0) == max(m.compact_main, 0)
        for r in range(max(m.compact_main, 1), m.rev + 1):
            snap = m.snaps[r]
            for key, end in SWEEP_RANGES:
                hdr, kvs, more, count = decode_range(
                    sut.range(pb.RangeRequest(key=key, range_end=end, revision=r))
                )
                want = [(k, snap[k]) for k in select(snap, key, end)]
                assert hdr == header_fields(m.rev)
                assert kvs == want, (r, key, end, kvs, want)
                assert count == len(want) and not more
        # latest via revision 0 and negative revisions (R03)
        for requested in (0, -5):
            _, kvs, _, _ = decode_range(
                sut.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=requested))
            )
            assert kvs == sorted(m.latest.items())
        bad = [(m.rev + 1, errors.FUTURE_REV), (m.rev + 7, errors.FUTURE_REV)]
        if m.compact_main > 1:
            bad += [(m.compact_main - 1, errors.COMPACTED), (1, errors.COMPACTED)]
        for r, err in bad:
            for key, end in SWEEP_RANGES[:2]:
                try:
                    sut.range(pb.RangeRequest(key=key, range_end=end, revision=r))
                except EtcdError as e:
                    assert e == err, (r, e, err)
                else:
                    raise AssertionError(f"read at {r} should fail with {err!r}")


MvccMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMvccModel = MvccMachine.TestCase


# -- single cases the machine does not generate --------------------------------------------------


def test_compact_zero_then_repeat_is_compacted() -> None:
    """C02: repeating the current compact revision fails, also when it is 0 (etcd's
    compactMainRev starts at -1, so Compact(0) on a fresh store succeeds once)."""
    sut, model = Sut(), Model()
    req = pb.CompactionRequest(revision=0)
    for _ in range(2):
        try:
            want: Any = model.compact(req)
        except EtcdError as e:
            want = e
        got = sut.batch([("compact", req)])[0]
        if isinstance(want, EtcdError):
            assert got == want
        else:
            assert pb.CompactionResponse.parse(got) == want  # type: ignore[arg-type]


def test_unsorted_limit_with_sort_target_sorts_only_limit_plus_one() -> None:
    """range.py's evaluation order (etcd's): sort_order NONE with a non-KEY target is ASCEND,
    but without filters only the first limit+1 keys (by key) take part in the sort."""
    sut = Sut()
    puts = [("put", pb.PutRequest(key=k)) for k in (b"a", b"a", b"a", b"b", b"b", b"c")]
    for item in puts:
        sut.batch([item])
    # versions: a=3, b=2, c=1
    req = pb.RangeRequest(
        key=b"a", range_end=b"\x00", limit=1, sort_target=pb.RangeRequestSortTarget.VERSION
    )
    resp = pb.RangeResponse.parse(sut.range(req))
    assert [(kv.key, kv.version) for kv in resp.kvs] == [(b"b", 2)]  # not c (version 1)
    assert resp.more and resp.count == 3
    # with an explicit order (or any filter) the whole range is sorted
    req.sort_order = pb.RangeRequestSortOrder.ASCEND
    resp = pb.RangeResponse.parse(sut.range(req))
    assert [(kv.key, kv.version) for kv in resp.kvs] == [(b"c", 1)]
    req.sort_order = pb.RangeRequestSortOrder.NONE
    req.max_mod_revision = 100
    resp = pb.RangeResponse.parse(sut.range(req))
    assert [(kv.key, kv.version) for kv in resp.kvs] == [(b"c", 1)]
    assert resp.more and resp.count == 3
