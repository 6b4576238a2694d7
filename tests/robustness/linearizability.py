"""A linearizability checker for one register with compare-and-set: Wing & Gong's search with
Lowe's memoisation (as porcupine does it), one key at a time.

The model of a key is its current value (None: absent). Operations, all on that key:

- ``put v``: the value becomes v;
- ``get -> r``: legal only if the value is r;
- ``delete -> ok``: legal only if ``ok`` says whether a value was there; the key becomes absent;
- ``cas expect then v -> ok``: the compare holds when the value is ``expect`` (by mod revision:
  the value the client read at that mod revision; values are unique, so comparing the value is
  the same compare); legal only if ``ok`` says whether it held; when it held, the value becomes v.

An unknown operation (no answer) has its return at +infinity and an unknown outcome: it may take
effect at any point after its invocation. Placed after every other operation it changes nothing
anyone observed, which is how "it never happened" is expressed: no separate case is needed.
Serializable reads may be stale and are not part of this check (checks.py covers them).

The search: entries (call and return events) in time order in a linked list; repeatedly take the
first call whose operation is legal in the current state and linearize it there (lift its call
and return out of the list), remembering (set of linearized operations, state) so that no
configuration is explored twice; meeting a return whose call was not linearized means the order
so far is wrong: undo the last choice and try the next call. The history is linearizable when
every entry has been lifted. Ties in time count as concurrent (calls sort before returns), so
the checker never reports a violation that depends on clock resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .history import Op

__all__ = ["KeyVerdict", "check_key"]

#: Search steps per key before giving up (a verdict of neither yes nor no).
MAX_STEPS = 3_000_000


@dataclass
class KeyVerdict:
    key: bytes
    ok: bool
    #: ok is False and the search ran out of steps: no verdict (reported as a problem too)
    gave_up: bool = False
    steps: int = 0
    #: when not linearizable: the operations of the longest linearizable prefix found, and the
    #: first operation that could not be placed after it
    explanation: str = ""


class _Entry:
    __slots__ = ("call", "id", "match", "next", "op", "prev", "time")

    def __init__(self, op_id: int, op: Op, call: bool, time: float) -> None:
        self.id = op_id
        self.op = op
        self.call = call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _step(state: bytes | None, op: Op) -> tuple[bool, bytes | None]:
    """Whether ``op`` is legal in ``state``, and the state after it."""
    unknown = op.complete is None
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return op.read == state, state
    if op.kind == "delete":
        return unknown or op.ok == (state is not None), None
    held = state == op.expect
    if unknown:
        return True, op.value if held else state
    return op.ok == held, op.value if held else state


def check_key(key: bytes, ops: list[Op], initial: bytes | None = None,
              max_steps: int = MAX_STEPS) -> KeyVerdict:
    """Whether ``ops`` (operations on ``key``: answered ones and unknown writes; no failed
    operations, no serializable reads) are linearizable from ``initial``."""
    entries: list[_Entry] = []
    for i, op in enumerate(ops):
        call = _Entry(i, op, True, op.invoke)
        ret = _Entry(i, op, False, math.inf if op.complete is None else op.complete)
        call.match = ret
        entries += (call, ret)
    entries.sort(key=lambda e: (e.time, 0 if e.call else 1))
    head = _Entry(-1, ops[0] if ops else None, True, -math.inf)  # type: ignore[arg-type]
    prev = head
    for e in entries:
        prev.next, e.prev = e, prev
        prev = e

    def lift(e: _Entry) -> None:
        assert e.prev is not None and e.match is not None and e.match.prev is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev
        m = e.match
        m.prev.next = m.next  # type: ignore[union-attr]
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e: _Entry) -> None:
        m = e.match
        assert m is not None and m.prev is not None and e.prev is not None
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e

    state = initial
    linearized = 0
    cache: set[tuple[int, bytes | None]] = {(0, initial)}
    calls: list[tuple[_Entry, bytes | None]] = []
    best: list[int] = []
    blocker: Op | None = None
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            return KeyVerdict(key, False, gave_up=True, steps=steps,
                              explanation=f"gave up after {max_steps} steps")
        assert entry is not None  # a return entry is always met before the list ends
        if entry.call:
            legal, after = _step(state, entry.op)
            if legal:
                lin = linearized | (1 << entry.id)
                if (lin, after) not in cache:
                    cache.add((lin, after))
                    calls.append((entry, state))
                    state, linearized = after, lin
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(calls) > len(best) or not best:
                best = [c.id for c, _ in calls]
                blocker = entry.op
            if not calls:
                break
            top, state = calls.pop()
            linearized &= ~(1 << top.id)
            unlift(top)
            entry = top.next
    else:
        return KeyVerdict(key, True, steps=steps)
    lines = [f"key {key.decode('latin-1')} is not linearizable; the longest linearizable "
             f"prefix ({len(best)} ops) ends with:"]
    lines += ["  " + ops[i].describe() for i in best[-5:]]
    if blocker is not None:
        lines.append("  after which this operation cannot be placed before its return: "
                     + blocker.describe())
    return KeyVerdict(key, False, steps=steps, explanation="\n".join(lines))
