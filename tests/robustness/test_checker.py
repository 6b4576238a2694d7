"""The checkers must fail on known-bad histories and agree with a brute-force search.

Each bad history is a small, hand-written case of one thing a broken store does (a read of a
value before its write was invoked, a lost acknowledged write, a stale failed CAS, a write
applied twice, a gap in a watch...). The property test compares the Wing-Gong/Lowe search with
an independent brute force (every order of the operations that respects real time, every subset
of the unknown writes) on small random histories, about half of them corrupted.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from .checks import (
    check_all,
    check_linearizable,
    check_log,
    check_real_time,
    check_serializable,
    check_watches,
)
from .history import History, Op, WatchEvent, WatchLog
from .linearizability import _step, check_key

K = b"k"


def op(kind: str, invoke: float, complete: float | None, *, value: bytes | None = None,
       expect: bytes | None = None, expect_rev: int | None = None, ok: bool = True,
       read: bytes | None = None, read_mod_rev: int = 0, revision: int = 0, key: bytes = K,
       serializable: bool = False, failed: bool = False, client: int = 0,
       gateway: int = 0) -> Op:
    return Op(client=client, gateway=gateway, kind=kind, key=key, value=value, expect=expect,
              expect_rev=expect_rev, serializable=serializable, invoke=invoke,
              complete=complete, failed=failed, ok=ok, read=read, read_mod_rev=read_mod_rev,
              revision=revision)


def put(v: bytes, a: float, b: float | None, rev: int = 0, **kw: object) -> Op:
    return op("put", a, b, value=v, revision=rev, **kw)  # type: ignore[arg-type]


def get(r: bytes | None, a: float, b: float, rev: int = 0, mod: int = 0, **kw: object) -> Op:
    return op("get", a, b, read=r, read_mod_rev=mod, revision=rev, **kw)  # type: ignore[arg-type]


def cas(expect: bytes | None, v: bytes, ok: bool, a: float, b: float | None, rev: int = 0,
        **kw: object) -> Op:
    return op("cas", a, b, expect=expect, value=v, ok=ok, revision=rev, **kw)  # type: ignore[arg-type]


def lin(ops: list[Op]) -> bool:
    return check_key(K, ops).ok


# -- the linearizability search ------------------------------------------------------------

def test_sequential_history_is_linearizable() -> None:
    assert lin([put(b"a", 0, 1), get(b"a", 2, 3), cas(b"a", b"b", True, 4, 5),
                get(b"b", 6, 7), cas(b"a", b"c", False, 8, 9), op("delete", 10, 11, ok=True),
                get(None, 12, 13), op("delete", 14, 15, ok=False)])


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    # the read overlaps both puts: it may see either value
    assert lin([put(b"a", 0, 10), put(b"b", 1, 11), get(b"a", 2, 12), get(b"b", 3, 13)])


def test_read_of_a_value_before_its_write_was_invoked_fails() -> None:
    v = check_key(K, [get(b"a", 0, 1), put(b"a", 2, 3)])
    assert not v.ok and not v.gave_up
    assert "not linearizable" in v.explanation


def test_lost_acknowledged_write_fails() -> None:
    assert not lin([put(b"a", 0, 1), put(b"b", 2, 3), get(b"a", 4, 5)])
    assert not lin([put(b"a", 0, 1), get(None, 2, 3)])


def test_stale_failed_cas_fails() -> None:
    # the write was acknowledged before the CAS was invoked: the compare had to hold
    assert not lin([put(b"a", 0, 1), cas(b"a", b"b", False, 2, 3)])


def test_cas_that_succeeded_on_a_value_that_was_not_there_fails() -> None:
    assert not lin([put(b"a", 0, 1), put(b"b", 2, 3), cas(b"a", b"c", True, 4, 5)])


def test_unknown_write_may_take_effect_late_or_never() -> None:
    late = [put(b"a", 0, None), get(None, 1, 2), get(b"a", 3, 4)]
    never = [put(b"a", 0, None), get(None, 1, 2), get(None, 3, 4)]
    assert lin(late) and lin(never)


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    assert not lin([get(b"a", 0, 1), put(b"a", 2, None)])


def test_unknown_write_cannot_take_effect_twice() -> None:
    # a, then b overwrote it; a reappearing would mean the write was applied twice
    assert not lin([put(b"a", 0, None), put(b"b", 5, 6), get(b"a", 1, 2), get(b"b", 7, 8),
                    get(b"a", 9, 10)])


def test_unknown_cas_takes_effect_only_if_its_compare_holds() -> None:
    assert lin([put(b"a", 0, 1), cas(b"a", b"b", False, 2, None), get(b"b", 3, 4)])
    assert not lin([put(b"x", 0, 1), cas(b"a", b"b", False, 2, None), get(b"b", 3, 4)])


def test_search_gives_up_within_its_budget() -> None:
    ops = [put(b"v%d" % i, 0, None) for i in range(12)] + [get(b"never", 1, 2)]
    v = check_key(K, ops, max_steps=500)
    assert not v.ok and v.gave_up


def _brute_force(ops: list[Op], initial: bytes | None = None) -> bool:
    """Linearizable by exhaustion: some subset of the unknown writes, in some order that keeps
    every completed-before-invoked pair, replays legally."""
    known = [o for o in ops if o.complete is not None]
    unknown = [o for o in ops if o.complete is None]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            todo = known + list(chosen)
            for order in itertools.permutations(todo):
                if not _respects_real_time(order):
                    continue
                state, legal = initial, True
                for o in order:
                    legal, state = _step(state, o)
                    if not legal:
                        break
                if legal:
                    return True
    return False


def _respects_real_time(order: tuple[Op, ...]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1:]:
            # `earlier` is placed after `later`: wrong if it completed before `later` began
            if earlier.complete is not None and earlier.complete < later.invoke:
                return False
    return True


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    """A history from a real sequential execution (each operation takes effect at a point
    inside its interval), sometimes with one answer corrupted."""
    n = draw(st.integers(1, 6))
    points = []
    for i in range(n):
        a = draw(st.integers(0, 20))
        p = a + draw(st.integers(0, 6))
        b = p + draw(st.integers(0, 6))
        kind = draw(st.sampled_from(["put", "get", "cas", "delete"]))
        expect = draw(st.sampled_from([None, b"v0", b"v1", b"v2"]))
        unknown = kind != "get" and draw(st.integers(0, 4)) == 0
        happened = not unknown or draw(st.booleans())
        points.append((p, i, a, b, kind, expect, unknown, happened))
    state: bytes | None = None
    ops: list[Op] = []
    for _p, i, a, b, kind, expect, unknown, happened in sorted(points):
        value = b"v%d" % i
        done: float | None = None if unknown else b + 0.5
        if kind == "put":
            o = put(value, a, done)
            if happened:
                state = value
        elif kind == "get":
            o = get(state, a, b + 0.5)
        elif kind == "delete":
            o = op("delete", a, done, ok=state is not None)
            if happened:
                state = None
        else:
            held = state == expect
            o = cas(expect, value, held, a, done)
            if happened and held:
                state = value
        ops.append(o)
    if draw(st.booleans()):
        j = draw(st.integers(0, len(ops) - 1))
        o = ops[j]
        if o.kind == "get":
            ops[j] = replace(o, read=draw(st.sampled_from([None, b"v0", b"v1", b"v9"])))
        else:
            ops[j] = replace(o, ok=not o.ok)
    return ops


@settings(max_examples=400, deadline=None)
@given(histories())
def test_search_agrees_with_brute_force(ops: list[Op]) -> None:
    v = check_key(K, ops)
    assert not v.gave_up
    assert v.ok == _brute_force(ops), [o.describe() for o in ops]


# -- checks across keys and on the log ----------------------------------------------------

def ev(rev: int, value: bytes | None, key: bytes = K) -> WatchEvent:
    return WatchEvent(rev=rev, key=key, value=value, mod_rev=rev)


def history(ops: list[Op], events: list[WatchEvent], watches: list[WatchLog] | None = None
            ) -> History:
    log: dict[int, list[WatchEvent]] = {}
    for e in events:
        log.setdefault(e.rev, []).append(e)
    final = max([1, *log])
    if watches is None:
        watches = [WatchLog(watcher=0, gateway=0, start_rev=1, events=list(events))]
    return History(ops=ops, watches=watches, final_rev=final, log=log)


def good() -> History:
    return history([put(b"a", 0, 1, rev=2), get(b"a", 2, 3, rev=2, mod=2),
                    cas(b"a", b"b", True, 4, 5, rev=3, gateway=1),
                    cas(b"a", b"c", False, 6, 7, rev=3, gateway=1),
                    get(b"b", 8, 9, rev=3, mod=3, serializable=True)],
                   [ev(2, b"a"), ev(3, b"b")])


def test_a_good_history_passes_every_check() -> None:
    assert check_all(good()) == []


def test_stale_failed_cas_through_another_gateway_is_found() -> None:
    # the probe: ack at revision 2 through gateway 0, then a failed compare through
    # gateway 1 answered from revision 1
    h = history([put(b"a", 0, 1, rev=2), cas(b"a", b"b", False, 2, 3, rev=1, gateway=1)],
                [ev(2, b"a")])
    assert any("stale" in v for v in check_real_time(h))
    assert check_log(h) == []  # consistent with revision 1: only real time shows it
    assert check_linearizable(h)
    # answered at revision 2, it is a plain lie about the compare
    assert any("compare held" in v for v in check_log(replace(h, ops=[
        h.ops[0], replace(h.ops[1], revision=2)])))


def test_lost_delete_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=2), op("delete", 2, 3, ok=False, revision=2, gateway=1),
                 get(b"a", 4, 5, rev=2, mod=2)], [ev(2, b"a")])
    assert any("existed" in v for v in check_log(h))
    assert check_linearizable(h)


def test_write_applied_twice_is_found() -> None:
    h = history([put(b"a", 0, None)], [ev(2, b"a"), ev(3, b"a")])
    assert any("written twice" in v for v in check_log(h))


def test_definitely_failed_write_in_the_log_is_found() -> None:
    h = history([put(b"a", 0, 1, failed=True)], [ev(2, b"a")])
    assert any("definitely failed" in v for v in check_log(h))


def test_acknowledged_write_missing_from_the_log_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=2), put(b"b", 2, 3, rev=3)],
                [ev(2, b"a"), ev(3, b"x", key=b"other")])
    assert any("not in the log" in v for v in check_log(h))
    beyond = history([put(b"a", 0, 1, rev=2), put(b"b", 2, 3, rev=3)], [ev(2, b"a")])
    assert any("final revision" in v for v in check_log(beyond))


def test_gap_in_the_log_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=3)], [ev(3, b"a")])
    assert any("revision 2 has 0 events" in v for v in check_log(h))


def test_read_that_disagrees_with_its_revision_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=2), put(b"b", 2, 3, rev=3), get(b"a", 4, 5, rev=3, mod=2)],
                [ev(2, b"a"), ev(3, b"b")])
    assert any("disagrees" in v for v in check_log(h))


def test_write_ordered_before_an_earlier_acknowledged_write_is_found() -> None:
    # b invoked after a's ack but logged before it
    h = history([put(b"a", 0, 1, rev=3), put(b"b", 2, 3, rev=2, key=b"other")],
                [ev(2, b"b", key=b"other"), ev(3, b"a")])
    assert check_real_time(h)


def test_unknown_write_applied_before_its_invocation_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=3), put(b"b", 2, None, key=b"other")],
                [ev(2, b"b", key=b"other"), ev(3, b"a")])
    assert check_real_time(h)


def test_serializable_read_going_backwards_is_found() -> None:
    h = history([put(b"a", 0, 1, rev=2), put(b"b", 2, 3, rev=3),
                 get(b"b", 4, 5, rev=3, mod=3, serializable=True),
                 get(b"a", 6, 7, rev=2, mod=2, serializable=True)],
                [ev(2, b"a"), ev(3, b"b")])
    assert check_serializable(h)
    assert check_real_time(h) == []  # serializable reads may be stale across gateways


def test_watch_gap_duplicate_and_bad_resume_are_found() -> None:
    events = [ev(2, b"a"), ev(3, b"b"), ev(4, b"c")]
    ops = [put(b"a", 0, 1, rev=2), put(b"b", 2, 3, rev=3), put(b"c", 4, 5, rev=4)]
    gap = WatchLog(0, 0, 1, [events[0], events[2]])
    dup = WatchLog(0, 0, 1, [events[0], events[1], events[1], events[2]])
    # resumed asking for 3, but the stream started again at 2
    resume = WatchLog(0, 0, 1, [events[0], events[0]], resumes=[(3, 1)])
    wrong = WatchLog(0, 0, 1, [events[0], ev(3, b"x"), events[2]])
    short = WatchLog(0, 0, 1, events[:2])
    for w in (gap, dup, resume, wrong, short):
        assert check_watches(history(ops, events, [w])), w
    assert check_watches(history(ops, events, [WatchLog(0, 0, 1, list(events),
                                                        resumes=[(3, 1)])])) == []


def test_history_round_trips_through_json(tmp_path: object) -> None:
    from pathlib import Path
    h = good()
    h.watches[0].resumes.append((3, 1))
    path = Path(str(tmp_path)) / "h.json"
    h.save(path)
    assert History.load(path) == h
