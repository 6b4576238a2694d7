"""Key ranges as etcd defines them (contract K02-K06).

A request names a range with ``key`` and ``range_end``:
- ``range_end`` empty: the single key ``key``;
- ``range_end`` == b"\\x00": every key >= ``key`` (from-key; with ``key`` b"\\x00", everything);
- otherwise the half-open interval [key, range_end) in unsigned bytewise order, empty when
  ``key`` >= ``range_end``.
Python compares bytes exactly this way, so plain ``<`` is the etcd order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyRange", "prefix_end"]

FROM_KEY = b"\x00"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """A normalised range: ``end`` None means unbounded above; ``single`` a one-key range."""

    start: bytes
    end: bytes | None
    single: bool

    @classmethod
    def of(cls, key: bytes, range_end: bytes) -> KeyRange:
        if not range_end:
            return cls(key, None, True)
        if range_end == FROM_KEY:
            return cls(key, None, False)
        return cls(key, range_end, False)

    def __contains__(self, k: object) -> bool:
        if not isinstance(k, bytes):
            return False
        if self.single:
            return k == self.start
        return k >= self.start and (self.end is None or k < self.end)

    @property
    def empty(self) -> bool:
        return not self.single and self.end is not None and self.start >= self.end


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key with ``prefix`` (contract K05)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return FROM_KEY
    p[-1] += 1
    return bytes(p)
