"""Write requests: Put, DeleteRange and Txn evaluated against an Overlay (contract P, D, X).

Evaluation is pure: it reads the overlay, and returns the response bytes plus the list of new
versions for the request's revision (empty when nothing changed). The caller stages them in the
overlay and, once the batch is durable, applies them to the replica.

etcd's order of checks is observable (which error wins), so it is kept:
- static checks (``check_*``): empty keys, sort options, ignore_* flags, op counts, then the
  duplicate-key rules of each branch;
- a Txn's path: the compares of the txn and of every nested txn on the executed path are
  evaluated first, all against the state *before* the txn;
- then the executed path is checked: every Put (ignore_* on an absent key, unknown lease), then
  every Range (future/compacted revision); nothing is written if one fails;
- then the ops run in order, each seeing the ones before it (txn-local visibility).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import betterproto2

from etcdgw import errors
from etcdgw.mvcc.keys import FROM_KEY, KeyRange
from etcdgw.mvcc.overlay import Overlay
from etcdgw.mvcc.range import check_range_request, execute_range
from etcdgw.mvcc.replica import Version
from etcdgw.wire import FIELD3, f_bool, f_int, f_msg, reframe

__all__ = [
    "WriteResult",
    "check_delete_request",
    "check_put_request",
    "check_txn_request",
    "evaluate_delete",
    "evaluate_put",
    "evaluate_txn",
    "is_read_only",
]

HeaderFn = Callable[[int], bytes]
LeaseExists = Callable[[int], bool]

# Compare.result and Compare.target values (contract X01).
EQUAL, GREATER, LESS, NOT_EQUAL = 0, 1, 2, 3
T_VERSION, T_CREATE, T_MOD, T_VALUE, T_LEASE = 0, 1, 2, 3, 4


def op_kind(op: Any) -> tuple[str, Any]:
    """The oneof member set in a RequestOp/ResponseOp: ("request_put", PutRequest) etc.,
    ("", None) for an op with nothing set."""
    return betterproto2.which_one_of(op, "request")


# -- static checks ----------------------------------------------------------------------------


def check_put_request(req: Any) -> None:
    if not req.key:
        raise errors.EMPTY_KEY
    if req.ignore_value and req.value:
        raise errors.VALUE_PROVIDED
    if req.ignore_lease and req.lease:
        raise errors.LEASE_PROVIDED


def check_delete_request(req: Any) -> None:
    if not req.key:
        raise errors.EMPTY_KEY


def check_txn_request(req: Any, max_ops: int) -> None:
    """etcd's checkTxnRequest then checkIntervals on each branch (X13-X16)."""
    _check_txn(req, max_ops)
    _intervals(req.success)
    _intervals(req.failure)


def _check_txn(req: Any, max_ops: int) -> None:
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_ops:
        raise errors.TOO_MANY_OPS
    for c in req.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in (*req.success, *req.failure):
        kind, r = op_kind(op)
        if kind == "request_range":
            check_range_request(r)
        elif kind == "request_put":
            check_put_request(r)
        elif kind == "request_delete_range":
            check_delete_request(r)
        elif kind == "request_txn":
            _check_txn(r, max_ops - opc)
        else:
            raise errors.KEY_NOT_FOUND


def _intervals(ops: Sequence[Any]) -> tuple[set[bytes], list[KeyRange]]:
    """Keys put and ranges deleted by ``ops`` (recursively), failing on a duplicate (X14/X15):
    two puts of a key, or a put of a key that a delete of the same list (or of a nested txn)
    covers. Overlapping deletes are fine; the two branches of one nested txn may put one key."""
    dels: list[KeyRange] = []
    for op in ops:
        kind, r = op_kind(op)
        # etcd checks against the literal interval [key, range_end): a from-key delete
        # (range_end "\x00") is an empty interval there, so it never conflicts with a put.
        if kind == "request_delete_range" and r.range_end != FROM_KEY:
            dels.append(KeyRange.of(r.key, r.range_end))
    puts: set[bytes] = set()
    for op in ops:
        kind, r = op_kind(op)
        if kind != "request_txn":
            continue
        puts_then, dels_then = _intervals(r.success)
        puts_else, dels_else = _intervals(r.failure)
        for k in puts_then:
            if k in puts or _covered(k, dels):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or _covered(k, dels):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        kind, r = op_kind(op)
        if kind != "request_put":
            continue
        if r.key in puts or _covered(r.key, dels):
            raise errors.DUPLICATE_KEY
        puts.add(r.key)
    return puts, dels


def _covered(key: bytes, ranges: list[KeyRange]) -> bool:
    return any(key in kr for kr in ranges)


def is_read_only(req: Any) -> bool:
    """A txn with only Range ops, on both branches and in every nested txn (X18)."""
    for op in (*req.success, *req.failure):
        kind, r = op_kind(op)
        if kind in ("request_put", "request_delete_range"):
            return False
        if kind == "request_txn" and not is_read_only(r):
            return False
    return True


# -- evaluation -------------------------------------------------------------------------------


class WriteResult:
    """The response bytes of one request and the versions it creates at ``rev``."""

    __slots__ = ("changes", "response", "rev")

    def __init__(self, response: bytes, rev: int, changes: list[Version]) -> None:
        self.response = response
        self.rev = rev
        self.changes = changes


class _Exec:
    """One request's execution: reads see the overlay plus this request's own changes, which
    all carry revision ``begin + 1``."""

    def __init__(self, ov: Overlay, lease_exists: LeaseExists) -> None:
        self.ov = ov
        self.begin = ov.rev
        self.lease_exists = lease_exists
        self.local: dict[bytes, Version] = {}
        self.changes: list[Version] = []

    @property
    def cur(self) -> int:
        return self.begin + 1 if self.changes else self.begin

    def get(self, key: bytes) -> Version | None:
        v = self.local.get(key)
        if v is not None:
            return None if v.version == 0 else v
        return self.ov.get(key)

    def range(self, kr: KeyRange, rev: int) -> list[Version]:
        if rev <= self.begin or not self.local:
            return self.ov.range(kr, min(rev, self.begin))
        found = {v.key: v for v in self.ov.range(kr, self.begin)}
        for k, v in self.local.items():
            if k in kr:
                found[k] = v
        return [v for _, v in sorted(found.items()) if v.version != 0]

    def _write(self, v: Version) -> None:
        self.local[v.key] = v
        self.changes.append(v)

    # Each op returns its response body without header; the caller adds the header.

    def put(self, req: Any) -> tuple[bytes, int]:
        prev = self.get(req.key)
        value, lease = req.value, req.lease
        if req.ignore_value or req.ignore_lease:
            if prev is None:
                raise errors.KEY_NOT_FOUND
            if req.ignore_value:
                value = prev.value
            if req.ignore_lease:
                lease = prev.lease
        rev = self.begin + 1
        if prev is None:
            v = Version(req.key, rev, rev, 1, value, lease)
        else:
            v = Version(req.key, rev, prev.create, prev.version + 1, value, lease)
        self._write(v)
        body = prev.framed if (req.prev_kv and prev is not None) else b""
        return body, rev

    def delete(self, req: Any) -> tuple[bytes, int]:
        kr = KeyRange.of(req.key, req.range_end)
        doomed = [] if kr.empty else self.range(kr, self.cur)
        rev = self.begin + 1
        for v in doomed:
            self._write(Version.tombstone(v.key, rev))
        body = f_int(2, len(doomed))
        if req.prev_kv:
            body += b"".join(reframe(v.framed, FIELD3) for v in doomed)
        return body, self.cur

    def range_op(self, req: Any) -> bytes:
        cur = self.cur
        rev = cur if req.revision <= 0 else req.revision
        if rev > cur:
            raise errors.FUTURE_REV
        if rev < self.ov.compact_rev:
            raise errors.COMPACTED
        return execute_range(self, req, rev, f_int(3, cur))

    # -- txn --

    def compare(self, c: Any) -> bool:
        kr = KeyRange.of(c.key, c.range_end)
        target = int(c.target)
        if kr.single:
            v = self.ov.get(c.key)
            kvs = [] if v is None else [v]
        else:
            kvs = [] if kr.empty else self.ov.range(kr, self.begin)
        if not kvs:
            return False if target == T_VALUE else _compare_kv(c, target, None)
        return all(_compare_kv(c, target, v) for v in kvs)

    def path(self, req: Any) -> list[bool]:
        """etcd's compareToPath: the branch taken by this txn and by every nested txn on the
        executed path, depth first, all decided against the state before the txn."""
        ok = all(self.compare(c) for c in req.compare)
        out = [ok]
        for op in req.success if ok else req.failure:
            kind, r = op_kind(op)
            if kind == "request_txn":
                out.extend(self.path(r))
        return out

    def check(self, req: Any, path: list[bool], pos: int, stage: str) -> int:
        """Validate the executed ops (``stage`` "put" or "range"); return the path entries used."""
        used = 1
        for op in req.success if path[pos] else req.failure:
            kind, r = op_kind(op)
            if kind == "request_txn":
                used += self.check(r, path, pos + used, stage)
            elif kind == "request_put" and stage == "put":
                if (r.ignore_value or r.ignore_lease) and self.ov.get(r.key) is None:
                    raise errors.KEY_NOT_FOUND
                if r.lease and not self.lease_exists(r.lease):
                    raise errors.LEASE_NOT_FOUND
            elif kind == "request_range" and stage == "range" and r.revision != 0:
                if r.revision > self.begin:
                    raise errors.FUTURE_REV
                if r.revision < self.ov.compact_rev:
                    raise errors.COMPACTED
        return used

    def run_txn(self, req: Any, path: list[bool], pos: int) -> tuple[bytes, int]:
        """Execute the chosen branch; return the TxnResponse body (no header) and the path
        entries used. Nested responses carry a header with only a revision (H12); a nested
        TxnResponse an empty one, as etcd sends."""
        ok = path[pos]
        used = 1
        parts = [f_bool(2, ok)]
        for op in req.success if ok else req.failure:
            kind, r = op_kind(op)
            if kind == "request_range":
                resp = f_msg(1, self.range_op(r))
            elif kind == "request_put":
                body, rev = self.put(r)
                resp = f_msg(2, f_msg(1, f_int(3, rev)) + body)
            elif kind == "request_delete_range":
                body, rev = self.delete(r)
                resp = f_msg(3, f_msg(1, f_int(3, rev)) + body)
            else:  # request_txn (others were rejected by the static checks)
                body, n = self.run_txn(r, path, pos + used)
                used += n
                resp = f_msg(4, f_msg(1, b"") + body)
            parts.append(f_msg(3, resp))
        return b"".join(parts), used


def _compare_kv(c: Any, target: int, v: Version | None) -> bool:
    if target == T_VALUE:
        a: Any = v.value if v is not None else b""
        b: Any = c.value if c.value is not None else b""
    else:
        if target == T_VERSION:
            a, b = (v.version if v else 0), c.version
        elif target == T_CREATE:
            a, b = (v.create if v else 0), c.create_revision
        elif target == T_MOD:
            a, b = (v.mod if v else 0), c.mod_revision
        elif target == T_LEASE:
            a, b = (v.lease if v else 0), c.lease
        else:
            a, b = 0, 0
        if b is None:
            b = 0
    result = int(c.result)
    if result == EQUAL:
        return bool(a == b)
    if result == NOT_EQUAL:
        return bool(a != b)
    if result == GREATER:
        return bool(a > b)
    if result == LESS:
        return bool(a < b)
    return True


def evaluate_put(ov: Overlay, req: Any, lease_exists: LeaseExists, header: HeaderFn) -> WriteResult:
    """A top-level Put: the lease is checked first, then ignore_* (P03, P06)."""
    if req.lease and not lease_exists(req.lease):
        raise errors.LEASE_NOT_FOUND
    ex = _Exec(ov, lease_exists)
    body, rev = ex.put(req)
    return WriteResult(f_msg(1, header(rev)) + body, rev, ex.changes)


def evaluate_delete(ov: Overlay, req: Any, header: HeaderFn) -> WriteResult:
    ex = _Exec(ov, lambda _lease: False)
    body, rev = ex.delete(req)
    return WriteResult(f_msg(1, header(rev)) + body, rev, ex.changes)


def evaluate_txn(ov: Overlay, req: Any, lease_exists: LeaseExists, header: HeaderFn) -> WriteResult:
    """A Txn (after check_txn_request). Read-only txns go through here too, with no changes."""
    ex = _Exec(ov, lease_exists)
    path = ex.path(req)
    ex.check(req, path, 0, "put")
    ex.check(req, path, 0, "range")
    body, _ = ex.run_txn(req, path, 0)
    rev = ex.cur
    return WriteResult(f_msg(1, header(rev)) + body, rev, ex.changes)
