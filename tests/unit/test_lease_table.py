"""The pure lease table against a simple model (hypothesis state machine), plus the TTL rules.

The model is a dict of leases {id: (ttl, deadline)} and a dict of attachments {key: lease}; every
query is answered by brute force over them. The table must agree after every step, including
``expired`` (deadline order, ties by id) and ``remaining`` (truncated seconds, L12).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from etcdgw import errors
from etcdgw.lease.table import MAX_TTL, MIN_TTL, LeaseTable, effective_ttl
from etcdgw.mvcc.replica import Version

IDS = st.integers(min_value=1, max_value=6)
KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
TTLS = st.integers(min_value=MIN_TTL, max_value=20)
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0, 7.0])


class LeaseTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = LeaseTable()
        self.now = 100.0
        self.leases: dict[int, tuple[int, float]] = {}
        self.attached: dict[bytes, int] = {}
        self.rev = 1

    # -- durable changes --------------------------------------------------------------------

    @rule(lease_id=IDS, ttl=TTLS)
    def grant(self, lease_id: int, ttl: int) -> None:
        if lease_id in self.leases:
            with pytest.raises(errors.EtcdError) as raised:
                self.table.grant(lease_id, ttl, self.now)
            assert raised.value == errors.LEASE_EXISTS
            return
        self.table.grant(lease_id, ttl, self.now)
        self.leases[lease_id] = (ttl, self.now + ttl)

    @rule(lease_id=IDS)
    def revoke(self, lease_id: int) -> None:
        assert self.table.revoke(lease_id) == (lease_id in self.leases)
        self.leases.pop(lease_id, None)
        self.attached = {k: v for k, v in self.attached.items() if v != lease_id}

    @rule(puts=st.lists(st.tuples(KEYS, st.integers(0, 6)), max_size=3),
          deletes=st.lists(KEYS, max_size=2))
    def revision(self, puts: list[tuple[bytes, int]], deletes: list[bytes]) -> None:
        self.rev += 1
        changes = [Version(k, self.rev, self.rev, 1, b"v", lease) for k, lease in puts]
        changes += [Version.tombstone(k, self.rev) for k in deletes]
        self.table.apply(changes)
        for v in changes:
            self.attached.pop(v.key, None)
            if v.version and v.lease in self.leases:
                self.attached[v.key] = v.lease

    # -- time ------------------------------------------------------------------------------

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.now += step

    @rule(lease_id=IDS)
    def renew(self, lease_id: int) -> None:
        got = self.table.renew(lease_id, self.now)
        lease = self.leases.get(lease_id)
        if lease is None or self.now >= lease[1]:
            assert got == 0
        else:
            assert got == lease[0]
            self.leases[lease_id] = (lease[0], self.now + lease[0])

    @precondition(lambda self: bool(self.leases))
    @rule(limit=st.none() | st.integers(1, 3))
    def expired(self, limit: int | None) -> None:
        want = sorted((d, i) for i, (_, d) in self.leases.items() if d <= self.now)
        if limit is not None:
            want = want[:limit]
        assert self.table.expired(self.now, limit) == [i for _, i in want]

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def agrees(self) -> None:
        t = self.table
        assert len(t) == len(self.leases)
        for lease_id in range(1, 7):
            lease = self.leases.get(lease_id)
            assert (lease_id in t) == (lease is not None)
            want_keys = sorted(k for k, v in self.attached.items() if v == lease_id)
            assert t.keys(lease_id) == want_keys
            if lease is None or self.now >= lease[1]:
                assert t.remaining(lease_id, self.now) == -1
            else:
                assert t.remaining(lease_id, self.now) == int(lease[1] - self.now)
                got = t.get(lease_id)
                assert got is not None and got.ttl == lease[0]
        for key in (b"a", b"b", b"c", b"d", b"e"):
            assert t.lease_of(key) == self.attached.get(key, 0)
        live = sorted((d, i) for i, (_, d) in self.leases.items() if self.now < d)
        assert t.live(self.now) == [i for _, i in live]


TestLeaseTable = LeaseTableMachine.TestCase
TestLeaseTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_effective_ttl() -> None:
    assert effective_ttl(-5) == MIN_TTL == 2
    assert effective_ttl(0) == 2
    assert effective_ttl(1) == 2
    assert effective_ttl(3) == 3
    assert effective_ttl(MAX_TTL) == 9_000_000_000
    with pytest.raises(errors.EtcdError) as raised:
        effective_ttl(MAX_TTL + 1)
    assert raised.value == errors.LEASE_TTL_TOO_LARGE


def test_fresh_id_is_positive_unique_and_avoids_taken() -> None:
    table = LeaseTable()
    table.grant(5, 10, 0.0)
    values = iter([0, 5, -1 & (2**64 - 1), 6, 7])
    got = table.fresh_id(lambda: next(values), lambda i: i == 2**63 - 1)
    assert got == 6  # 0: no lease; 5: granted; 2**63-1 (masked): taken by the batch
    rng = random.Random(1)
    ids = {table.fresh_id(lambda: rng.getrandbits(64), lambda i: False) for _ in range(100)}
    assert all(0 < i < 2**63 for i in ids)


def test_heap_stays_bounded_under_renewals() -> None:
    table = LeaseTable()
    table.grant(1, 10, 0.0)
    for n in range(10_000):
        assert table.renew(1, n * 0.001) == 10
    assert len(table._heap) <= 2 * len(table) + 65
    assert table.expired(10.0) == []
    assert table.expired(20.0) == [1]
