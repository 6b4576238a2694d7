"""KV.Range semantics (contract R01-R16), producing spliced RangeResponse bytes.

The rules below follow etcd's own evaluation order, which clients can observe:
1. fetch the live keys of the range at the read revision (``count`` is their number, before
   any filter or limit);
2. without a sort order and without filters, only ``limit + 1`` keys (in key order) take part in
   what follows; etcd fetches that many from its index before sorting, so a NONE-ordered
   request with a non-key sort target sorts just those;
3. drop kvs outside the min/max mod/create revision bounds;
4. sort (NONE with a non-KEY target means ASCEND; ties keep key order; DESCEND is stable too);
5. truncate to ``limit``; ``more`` says whether anything was cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any, Protocol

from etcdgw import errors
from etcdgw.mvcc.keys import KeyRange
from etcdgw.mvcc.replica import Version
from etcdgw.wire import f_bool, f_int, f_msg

__all__ = ["RangeReader", "check_range_request", "execute_range", "read_revision"]

SORT_NONE, SORT_ASCEND, SORT_DESCEND = 0, 1, 2
TARGET_KEY, TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE = 0, 1, 2, 3, 4

_SORT_KEYS: dict[int, Callable[[Version], Any]] = {
    TARGET_KEY: attrgetter("key"),
    TARGET_VERSION: attrgetter("version"),
    TARGET_CREATE: attrgetter("create"),
    TARGET_MOD: attrgetter("mod"),
    TARGET_VALUE: attrgetter("value"),
}


class RangeReader(Protocol):
    def range(self, kr: KeyRange, rev: int) -> Iterable[Version]: ...


def check_range_request(req: Any) -> None:
    """Static checks done before anything is read (etcd's checkRangeRequest)."""
    if not req.key:
        raise errors.EMPTY_KEY
    if int(req.sort_order) not in (0, 1, 2) or int(req.sort_target) not in _SORT_KEYS:
        raise errors.INVALID_SORT_OPTION


def read_revision(requested: int, current: int, compact_rev: int) -> int:
    """The revision a Range reads at (R03, R04): <= 0 means current."""
    if requested > current:
        raise errors.FUTURE_REV
    rev = current if requested <= 0 else requested
    if rev < compact_rev:
        raise errors.COMPACTED
    return rev


def execute_range(reader: RangeReader, req: Any, rev: int, header: bytes) -> bytes:
    """Evaluate ``req`` at ``rev`` and return the RangeResponse wire bytes.

    ``header`` is the encoded ResponseHeader body (its revision is the store's current
    revision, whatever revision was read: contract H05)."""
    kr = KeyRange.of(req.key, req.range_end)
    if kr.empty:
        return f_msg(1, header)
    found = reader.range(kr, rev)
    kvs = found if isinstance(found, list) else list(found)
    count = len(kvs)
    if req.count_only:
        return f_msg(1, header) + f_int(4, count)

    limit = req.limit
    order = int(req.sort_order)
    target = int(req.sort_target)
    filtered = bool(
        req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    )
    if limit > 0 and order == SORT_NONE and not filtered:
        kvs = kvs[: limit + 1]
    if filtered:
        kvs = [v for v in kvs if _in_bounds(v, req)]
    if order == SORT_NONE and target != TARGET_KEY:
        order = SORT_ASCEND
    if order != SORT_NONE:
        if target == TARGET_KEY:
            if order == SORT_DESCEND:
                kvs.reverse()
        else:
            kvs.sort(key=_SORT_KEYS[target], reverse=order == SORT_DESCEND)
    more = False
    if 0 < limit < len(kvs):
        kvs = kvs[:limit]
        more = True

    if req.keys_only:
        body = b"".join(v.keys_only() for v in kvs)
    else:
        body = b"".join([v.framed for v in kvs])
    return b"".join((f_msg(1, header), body, f_bool(3, more), f_int(4, count)))


def _in_bounds(v: Version, req: Any) -> bool:
    if req.max_mod_revision and v.mod > req.max_mod_revision:
        return False
    if req.min_mod_revision and v.mod < req.min_mod_revision:
        return False
    if req.max_create_revision and v.create > req.max_create_revision:
        return False
    return not (req.min_create_revision and v.create < req.min_create_revision)
