"""The sharding of renewal documents (etcdgw.backends.cosmos.leases.RenewalDocs), pure.

A dict stands for the container. Every flush's plan is applied step by step, and at every
step the test checks that the owner's query, taken at any moment (each write of a step may
land before or after the others), finds every lease: a lease never disappears while the
layout changes.
"""

from __future__ import annotations

import json
import random

from etcdgw.backends.cosmos.leases import BUCKET_LEASES, RenewalDocs, bucket_of, layout

MEMBER = 77

Container = dict[str, dict[int, int]]


def flush(docs: RenewalDocs, container: Container, renewals: dict[int, int],
          changed: set[int]) -> list[str]:
    """One save_renewals against ``container``: the ids written (upserts, in step order)."""
    durable = {i for i in _found(container) if i in renewals}  # (dropped ones may go)
    if docs.existing is None:
        docs.found(list(container))
    docs.update(renewals, changed)
    new, rewritten, stale = docs.plan()
    written: list[str] = []
    for step in (new, rewritten):
        after = {d["id"]: {int(k): v for k, v in d["leases"].items()} for d in step}
        _always_found(container, after, set(), durable)
        container.update(after)
        for d in step:
            docs.written(d)
        written += [d["id"] for d in step]
    _always_found(container, {}, set(stale), durable)
    for doc_id in stale:
        del container[doc_id]
        docs.deleted(doc_id)
    docs.settle()
    return written


def _always_found(container: Container, writes: dict[str, dict[int, int]], deletes: set[str],
                  durable: set[int]) -> None:
    """Whatever subset of ``writes``/``deletes`` has landed, every lease that was durable
    before the flush (and is not being dropped) is in some document:
    for each lease, one document holds it in every state it can be in (a document being
    written: before and after; a document being created or deleted: it may be absent)."""
    for lease_id in durable:
        assert any(lease_id in leases and doc_id not in deletes
                   and (doc_id not in writes or lease_id in writes[doc_id])
                   for doc_id, leases in container.items()), \
            f"lease {lease_id} can be missing from a read"


def _found(container: Container) -> dict[int, int]:
    out: dict[int, int] = {}
    for leases in container.values():
        for i, n in leases.items():
            out[i] = max(out.get(i, -1), n)
    return out


def test_layout_grows_by_doubling_and_shrinks_with_hysteresis() -> None:
    assert [layout(c, 0) for c in (0, 1, BUCKET_LEASES, BUCKET_LEASES + 1)] == [1, 1, 1, 2]
    assert layout(60_000, 0) == 32
    assert layout(60_000, 1) == 32
    assert layout(2 * BUCKET_LEASES // 4 + 1, 2) == 2  # above a quarter: kept
    assert layout(2 * BUCKET_LEASES // 4, 2) == 1
    assert layout(100, 32) == 1


def test_ids_spread_evenly_whatever_their_pattern() -> None:
    rng = random.Random(9)
    for ids in ([rng.getrandbits(63) for _ in range(60_000)], list(range(1, 60_001)),
                [i << 20 for i in range(1, 60_001)]):
        sizes = [0] * 32
        for i in ids:
            sizes[bucket_of(i, 32)] += 1
        assert max(sizes) < 1.2 * 60_000 / 32, sizes


def test_60000_leases_make_small_documents_and_a_second_flush_writes_what_changed() -> None:
    rng = random.Random(1)
    renewals = {rng.getrandbits(63) | 1: rng.randrange(1, 10**9) for _ in range(60_000)}
    docs, container = RenewalDocs(MEMBER), {}
    written = flush(docs, container, renewals, set(renewals))
    assert len(written) == 32 and len(container) == 32
    biggest = max(len(json.dumps(docs.doc(b))) for b in range(docs.n))
    assert biggest < 100_000  # far under Cosmos's 2 MB (and the 1 MB this test allows)
    assert _found(container) == renewals
    some = rng.sample(sorted(renewals), 3)
    for i in some:
        renewals[i] += 1
    written = flush(docs, container, renewals, set(some))
    assert sorted(written) == sorted({docs.doc_id(bucket_of(i, 32)) for i in some})
    assert _found(container) == renewals


def test_few_leases_one_document_one_write_per_flush() -> None:
    docs, container = RenewalDocs(MEMBER), {}
    renewals = {i: 1 for i in range(1, 50)}
    assert flush(docs, container, renewals, set(renewals)) == [f"renew-{MEMBER}-0"]
    renewals[7] += 1
    renewals[42] += 1
    assert flush(docs, container, renewals, {7, 42}) == [f"renew-{MEMBER}-0"]
    del renewals[3]
    assert flush(docs, container, renewals, {3}) == [f"renew-{MEMBER}-0"]
    assert _found(container) == renewals


def test_no_lease_goes_missing_while_the_layout_grows_and_shrinks() -> None:
    rng = random.Random(2)
    docs, container = RenewalDocs(MEMBER), {}
    renewals: dict[int, int] = {}
    for target in (1_500, 2_500, 9_000, 17_000, 3_000, 900, 40, 5_000):
        changed: set[int] = set()
        while len(renewals) < target:
            i = rng.getrandbits(63) | 1
            renewals[i] = 1
            changed.add(i)
        while len(renewals) > target:
            i = rng.choice(list(renewals))
            del renewals[i]
            changed.add(i)
        for i in rng.sample(sorted(renewals), min(50, len(renewals))):
            renewals[i] += 1
            changed.add(i)
        flush(docs, container, renewals, changed)
        assert _found(container) == renewals
        assert set(container) == {docs.doc_id(b) for b in range(docs.n)}
        assert docs.n == layout(len(renewals), docs.n)


def test_a_restarted_gateway_replaces_what_its_earlier_layout_left() -> None:
    rng = random.Random(3)
    renewals = {rng.getrandbits(63) | 1: 5 for _ in range(20_000)}
    container: Container = {}
    flush(RenewalDocs(MEMBER), container, renewals, set(renewals))
    assert len(container) == 16
    container[f"renew-{MEMBER}"] = {i: 4 for i in renewals}  # the unsharded form, older
    container["renew-7-0"] = {1: 1}  # another gateway's: left alone
    # The restarted gateway continues the counters (the manager reads them back first), now
    # for fewer leases, then for more.
    kept = dict(list(renewals.items())[:3_000])
    for i in list(kept)[:10]:
        kept[i] += 1
    docs = RenewalDocs(MEMBER)
    flush(docs, container, kept, set(kept))
    assert set(container) == {"renew-7-0", *(docs.doc_id(b) for b in range(docs.n))}
    assert docs.n == 2
    more = {**kept, **{rng.getrandbits(63) | 1: 1 for _ in range(10_000)}}
    flush(docs, container, more, set(more) - set(kept))
    assert docs.n == 8
    found = _found(container)
    assert found == {**more, 1: 1}
