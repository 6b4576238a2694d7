"""Every check of a robustness history; each returns its violations as readable lines.

Two independent views are checked against each other:

- the operations, as the clients saw them (history.Op), checked per key for linearizability
  by a model that does not trust the system (linearizability.py);
- the log, every revision as a fresh watch reads it after the run, and the watch streams of the
  run. Everything the clients were told must agree with the log, and the log must be a valid
  etcd log: revisions dense from 2 (revision 1 is the empty store: the run writes on a fresh one
  and nothing else writes), one event each (every operation touches one key), every value once.

Unknown writes are resolved with the log before the linearizability search: a write whose value
never appears in the log did not happen and is dropped (if some read saw that value anyway, the
search fails, as it must). This only removes choices from the search, so it can make a wrong
log visible but never hide a violation, and it keeps the search small under heavy faults.
"""

from __future__ import annotations

import collections
from bisect import bisect_right
from collections.abc import Iterable

from .history import History, Op, WatchEvent, WatchLog
from .linearizability import check_key

__all__ = ["check_all", "check_linearizable", "check_log", "check_real_time",
           "check_serializable", "check_watches"]

LIMIT = 20  # violations shown per check


def _clip(out: list[str]) -> list[str]:
    if len(out) > LIMIT:
        return [*out[:LIMIT], f"... and {len(out) - LIMIT} more"]
    return out


class _Replay:
    """The state of every key at every revision of the log."""

    def __init__(self, log: dict[int, list[WatchEvent]]) -> None:
        self.revs: dict[bytes, list[int]] = collections.defaultdict(list)
        self.states: dict[bytes, list[tuple[bytes | None, int]]] = collections.defaultdict(list)
        self.by_value: dict[bytes, WatchEvent] = {}
        for rev in sorted(log):
            for ev in log[rev]:
                self.revs[ev.key].append(rev)
                self.states[ev.key].append((ev.value, rev if ev.value is not None else 0))
                if ev.value is not None:
                    self.by_value.setdefault(ev.value, ev)

    def at(self, key: bytes, rev: int) -> tuple[bytes | None, int]:
        """(value, mod revision) of ``key`` at ``rev``; (None, 0) when absent."""
        i = bisect_right(self.revs.get(key, []), rev)
        return self.states[key][i - 1] if i else (None, 0)


def check_log(h: History) -> list[str]:
    """The log is dense and consistent, and every answer agrees with it."""
    out: list[str] = []
    for rev in range(2, h.final_rev + 1):
        evs = h.log.get(rev, [])
        if len(evs) != 1:
            out.append(f"log: revision {rev} has {len(evs)} events (expected exactly one)")
    for rev in h.log:
        if not 2 <= rev <= h.final_rev:
            out.append(f"log: an event at revision {rev}, outside 2..{h.final_rev}")
    seen: dict[bytes, int] = {}
    for rev in sorted(h.log):
        for ev in h.log[rev]:
            if ev.mod_rev != rev:
                out.append(f"log: event at revision {rev} has mod revision {ev.mod_rev}")
            if ev.value is not None:
                if ev.value in seen:
                    out.append(f"log: value {ev.value!r} written twice, at {seen[ev.value]} "
                               f"and {rev} (a write applied twice)")
                seen.setdefault(ev.value, rev)
    replay = _Replay(h.log)
    prev_state: dict[bytes, tuple[bytes | None, int]] = {}
    for op in h.ops:
        if op.failed:
            if op.value is not None and op.value in seen:
                out.append(f"a definitely failed write is in the log at revision "
                           f"{seen[op.value]}: {op.describe()}")
            continue
        if not op.done:
            continue
        if op.revision > h.final_rev:
            out.append(f"answered at revision {op.revision} > the final revision "
                       f"{h.final_rev}: {op.describe()}")
            continue
        now = replay.at(op.key, op.revision)
        before = replay.at(op.key, op.revision - 1)
        wrote = (op.kind == "put" or (op.kind == "cas" and op.ok)
                 or (op.kind == "delete" and op.ok))
        if wrote:
            evs = h.log.get(op.revision, [])
            want = op.value if op.kind != "delete" else None
            if not any(ev.key == op.key and ev.value == want for ev in evs):
                out.append(f"acknowledged write not in the log at its revision "
                           f"{op.revision} (there: {[(e.key, e.value) for e in evs]}): "
                           f"{op.describe()}")
            if op.kind == "cas" and not _holds(op, before):
                out.append(f"CAS succeeded but its compare did not hold at revision "
                           f"{op.revision - 1} (value {before[0]!r}@{before[1]}): "
                           f"{op.describe()}")
            if op.kind == "delete" and before[0] is None:
                out.append(f"delete reported a deletion of an absent key at revision "
                           f"{op.revision}: {op.describe()}")
        elif op.kind == "get":
            if (op.read, op.read_mod_rev) != now:
                out.append(f"read disagrees with the log at its header revision "
                           f"{op.revision} (log: {now[0]!r}@{now[1]}): {op.describe()}")
        elif op.kind == "cas":
            if op.value in seen:
                out.append(f"failed CAS's value is in the log at revision {seen[op.value]}: "
                           f"{op.describe()}")
            if _holds(op, now):
                out.append(f"CAS failed but its compare held at its header revision "
                           f"{op.revision} (value {now[0]!r}@{now[1]}): {op.describe()}")
        elif op.kind == "delete" and now[0] is not None:
            out.append(f"delete deleted nothing but the key existed at its header revision "
                       f"{op.revision} ({now[0]!r}@{now[1]}): {op.describe()}")
        prev_state[op.key] = now
    return _clip(out)


def _holds(op: Op, state: tuple[bytes | None, int]) -> bool:
    if op.expect_rev is not None:
        return state[1] == op.expect_rev
    return state[0] == op.expect


def _revision_of(op: Op, applied: dict[bytes, int]) -> int | None:
    """The revision an operation is ordered at: its answer's, or for an unknown write, the
    revision at which the log shows it applied (None: it did not happen, or is a delete)."""
    if op.done:
        return op.revision
    if op.unknown and op.value is not None:
        return applied.get(op.value)
    return None


def check_real_time(h: History) -> list[str]:
    """An operation invoked after another one completed is ordered at a revision at least as
    high (strictly higher for two writes that each made a revision): what was acknowledged
    before a request arrived is visible to it. Serializable reads are exempt."""
    applied = {ev.value: rev for rev, evs in h.log.items() for ev in evs if ev.value is not None}
    made: dict[int, bool] = {}
    timed: list[tuple[Op, int]] = []
    for op in h.ops:
        if op.serializable or op.failed:
            continue
        rev = _revision_of(op, applied)
        if rev is None:
            continue
        timed.append((op, rev))
        made[id(op)] = op.writes and (op.unknown or op.kind == "put" or op.ok)
    by_complete = sorted((x for x in timed if x[0].complete is not None),
                         key=lambda x: x[0].complete or 0.0)
    out: list[str] = []
    i = 0
    best: tuple[Op, int] | None = None  # the highest revision completed so far
    best_write: tuple[Op, int] | None = None  # the highest revision made by a completed write
    for op, rev in sorted(timed, key=lambda x: x[0].invoke):
        while i < len(by_complete) and (by_complete[i][0].complete or 0.0) < op.invoke:
            done, drev = by_complete[i]
            if best is None or drev > best[1]:
                best = (done, drev)
            if made[id(done)] and (best_write is None or drev > best_write[1]):
                best_write = (done, drev)
            i += 1
        if best is not None and rev < best[1]:
            out.append(f"stale: ordered at revision {rev}, but revision {best[1]} was answered "
                       f"before it was invoked\n  before: {best[0].describe()}\n  "
                       f"this:   {op.describe()}")
        elif made[id(op)] and best_write is not None and rev <= best_write[1]:
            out.append(f"a write made revision {rev}, not after revision {best_write[1]} that "
                       f"a write completed before it was invoked\n  before: "
                       f"{best_write[0].describe()}\n  this:   {op.describe()}")
    return _clip(out)


def check_serializable(h: History) -> list[str]:
    """Serializable reads may be stale, but on one gateway never older than one completed
    before they were invoked."""
    out: list[str] = []
    per_gateway: dict[int, list[Op]] = collections.defaultdict(list)
    for op in h.ops:
        if op.kind == "get" and op.serializable and op.done:
            per_gateway[op.gateway].append(op)
    for gw, ops in sorted(per_gateway.items()):
        by_complete = sorted(ops, key=lambda o: o.complete or 0.0)
        i, best = 0, None
        for op in sorted(ops, key=lambda o: o.invoke):
            while i < len(by_complete) and (by_complete[i].complete or 0.0) < op.invoke:
                if best is None or by_complete[i].revision > best.revision:
                    best = by_complete[i]
                i += 1
            if best is not None and op.revision < best.revision:
                out.append(f"gateway {gw}: serializable read went back from revision "
                           f"{best.revision} to {op.revision}\n  before: {best.describe()}\n"
                           f"  this:   {op.describe()}")
    return _clip(out)


def check_watches(h: History) -> list[str]:
    """Each watch stream, over all its reconnects, delivered every revision from its start
    through the final one exactly once, in order, each event as the log has it; each resume
    continued exactly where it asked to."""
    out: list[str] = []
    for w in h.watches:
        out += _check_watch(w, h)
    acked = [op for op in h.ops if op.done and op.writes and (op.kind == "put" or op.ok)]
    for w in h.watches:
        got = {(ev.rev, ev.key, ev.value) for ev in w.events}
        for op in acked:
            want = (op.revision, op.key, None if op.kind == "delete" else op.value)
            if want not in got:
                out.append(f"watcher {w.watcher} (gateway {w.gateway}) never delivered the "
                           f"acknowledged write {op.describe()}")
    return _clip(out)


def _check_watch(w: WatchLog, h: History) -> Iterable[str]:
    name = f"watcher {w.watcher} (gateway {w.gateway})"
    expected = max(w.start_rev, 2)
    for i, ev in enumerate(w.events):
        if ev.rev != expected:
            kind = "duplicate or out of order" if ev.rev < expected else "gap"
            yield (f"{name}: event {i} at revision {ev.rev}, expected {expected} ({kind}; "
                   f"resumes {w.resumes})")
            return
        log_evs = h.log.get(ev.rev, [])
        if not any(e.key == ev.key and e.value == ev.value for e in log_evs):
            yield (f"{name}: event at revision {ev.rev} {ev.key!r}={ev.value!r} is not the "
                   f"log's {[(e.key, e.value) for e in log_evs]}")
        expected = ev.rev + 1
    if expected <= h.final_rev:
        yield f"{name}: ended at revision {expected - 1}, the log at {h.final_rev}"
    for start, at in w.resumes:
        if at < len(w.events) and w.events[at].rev != start:
            yield (f"{name}: resumed at {start} but the next event was at revision "
                   f"{w.events[at].rev}")


def check_linearizable(h: History) -> list[str]:
    """Per key, the operations are linearizable for a register with compare-and-set."""
    applied = {ev.value for evs in h.log.values() for ev in evs if ev.value is not None}
    per_key: dict[bytes, list[Op]] = collections.defaultdict(list)
    for op in h.ops:
        if op.failed or op.serializable:
            continue
        if op.unknown and op.value is not None and op.value not in applied:
            continue  # resolved by the log: it never happened
        if op.unknown and not op.writes:
            continue
        per_key[op.key].append(op)
    out: list[str] = []
    for key, ops in sorted(per_key.items()):
        v = check_key(key, ops)
        if not v.ok:
            out.append(v.explanation)
    return out


def check_all(h: History) -> list[str]:
    return (check_log(h) + check_real_time(h) + check_serializable(h) + check_watches(h)
            + check_linearizable(h))
