"""Watch wire forms: events and WatchResponses spliced from stored KeyValue bytes (pure).

Fan-out is the other hot path (DESIGN): one revision's changes are encoded once, as framed
``WatchResponse.events`` entries, and every watcher that receives them gets the same bytes
behind its own small envelope (header, watch_id).

WatchResponse: header=1, watch_id=2, created=3, canceled=4, compact_revision=5,
cancel_reason=6, fragment=7, events=11. Event: type=1 (PUT=0, DELETE=1), kv=2, prev_kv=3.
"""

from __future__ import annotations

from collections.abc import Sequence

from etcdgw.mvcc.replica import Replica, Version
from etcdgw.wire import FIELD3, f_bool, f_bytes, f_int, f_msg, reframe, tag, varint

__all__ = ["EventCache", "created", "response", "split_fragments"]

_EVENTS_TAG = tag(11, 2)
_DELETE = b"\x08\x01"


def _frame_event(body: bytes) -> bytes:
    return _EVENTS_TAG + varint(len(body)) + body


class EventCache:
    """The framed events of one revision, each with and without ``prev_kv``, built on first
    use and shared by every watcher (and every stream) that the revision reaches."""

    __slots__ = ("_plain", "_prev", "changes", "replica", "rev")

    def __init__(self, replica: Replica, rev: int, changes: Sequence[Version]) -> None:
        self.replica = replica
        self.rev = rev
        self.changes = changes
        self._plain: list[bytes | None] = [None] * len(changes)
        self._prev: list[bytes | None] = [None] * len(changes)

    def event(self, i: int, with_prev: bool) -> bytes:
        cache = self._prev if with_prev else self._plain
        ev = cache[i]
        if ev is None:
            v = self.changes[i]
            body = (_DELETE if v.version == 0 else b"") + v.framed
            if with_prev:
                # The key's KeyValue at rev - 1 (W17); absent for a creation, or if compacted.
                hist = self.replica.history(v.key)
                prev = hist.at(self.rev - 1) if hist is not None else None
                if prev is not None:
                    body += reframe(prev.framed, FIELD3)
            ev = cache[i] = _frame_event(body)
        return ev


def response(header: bytes, watch_id: int, events: bytes = b"", *, fragment: bool = False,
             created_: bool = False, canceled: bool = False, compact_revision: int = 0,
             cancel_reason: str = "") -> bytes:
    """A WatchResponse; ``events`` is already a run of framed events."""
    return b"".join((
        f_msg(1, header),
        f_int(2, watch_id),
        f_bool(3, created_),
        f_bool(4, canceled),
        f_int(5, compact_revision),
        f_bytes(6, cancel_reason.encode()),
        f_bool(7, fragment),
        events,
    ))


def created(header: bytes, watch_id: int) -> bytes:
    return response(header, watch_id, created_=True)


def split_fragments(header: bytes, watch_id: int, events: list[bytes], limit: int) -> list[bytes]:
    """W25: a response of >= 2 events whose size reaches ``limit`` goes out as several, each
    below ``limit`` where possible, all but the last marked ``fragment``."""
    total = sum(map(len, events))
    if len(events) < 2 or total + len(header) + 16 < limit:
        return [response(header, watch_id, b"".join(events))]
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for ev in events:
        if chunk and size + len(ev) + len(header) + 16 >= limit:
            out.append(response(header, watch_id, b"".join(chunk), fragment=True))
            chunk, size = [], 0
        chunk.append(ev)
        size += len(ev)
    out.append(response(header, watch_id, b"".join(chunk)))
    return out
