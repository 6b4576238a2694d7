"""Leases in the commit pipeline: the Store over the real embedded backend, in-process.

Requests passed together to ``asyncio.gather`` are all queued before the pipeline runs, so they
form one batch: evaluated in order (request i sees the lease grants and revokes of requests < i),
committed with one backend call, applied only once durable. Time is the store's ``clock``,
replaced here by a settable one, so expiry needs no waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from etcdgw import errors
from etcdgw._proto import etcdserverpb as pb
from etcdgw.backends.base import BackendError
from etcdgw.backends.embedded import EmbeddedBackend
from etcdgw.lease.manager import LeaseManager
from etcdgw.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def open_store(data_dir: Path, clock: Clock) -> Store:
    backend = EmbeddedBackend(str(data_dir))
    store = await Store.open(backend)
    store.clock = clock
    return store


async def close_store(store: Store) -> None:
    await store.close()
    await store._backend.close()  # type: ignore[attr-defined]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "data", clock)
    yield s
    await close_store(s)


def put(key: bytes, lease: int = 0) -> Any:
    return pb.PutRequest(key=key, value=b"v", lease=lease)


async def outcome(coro: Any) -> Any:
    try:
        return await coro
    except errors.EtcdError as e:
        return e


async def batch(*coros: Any) -> list[Any]:
    return list(await asyncio.gather(*(outcome(c) for c in coros)))


def grant_id(body: bytes) -> int:
    return int(pb.LeaseGrantResponse.parse(body).id)


def header_rev(body: bytes, kind: type[Any]) -> int:
    return int(kind.parse(body).header.revision)


async def test_batch_sees_its_own_grants_and_revokes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[Any] = []
    real_commit = store._backend.commit

    async def commit(*args: Any, **kwargs: Any) -> None:
        commits.append(args[3])
        await real_commit(*args, **kwargs)

    monkeypatch.setattr(store._backend, "commit", commit)
    r = await batch(
        store.lease_grant(7, 10),
        store.put(put(b"a", 7)),  # granted earlier in the batch: fine
        store.lease_revoke(7),  # deletes a, put earlier in the batch
        store.put(put(b"b", 7)),  # revoked earlier in the batch
        store.lease_grant(7, 20),  # the id is free again
        store.put(put(b"c", 7)),
    )
    assert grant_id(r[0]) == 7
    assert header_rev(r[1], pb.PutResponse) == 2
    assert header_rev(r[2], pb.LeaseRevokeResponse) == 3
    assert r[3] == errors.LEASE_NOT_FOUND
    assert pb.LeaseGrantResponse.parse(r[4]).ttl == 20
    assert header_rev(r[5], pb.PutResponse) == 4
    assert store.revision == 4
    assert commits == [[(7, 10), (7, None), (7, 20)]]  # one batch, one commit, in order
    assert store.replica.get(b"a") is None and store.replica.get(b"c") is not None
    lease = store.leases.get(7)
    assert lease is not None and lease.ttl == 20 and store.leases.keys(7) == [b"c"]


async def test_grant_rules(store: Store) -> None:
    r = await batch(store.lease_grant(0, 1), store.lease_grant(9, 5), store.lease_grant(9, 5))
    chosen = pb.LeaseGrantResponse.parse(r[0])
    assert chosen.id > 0 and chosen.ttl == 2  # L04, L06
    assert r[2] == errors.LEASE_EXISTS
    assert store.revision == 1  # M04
    with pytest.raises(errors.EtcdError) as raised:
        await store.lease_grant(0, 9_000_000_001)
    assert raised.value == errors.LEASE_TTL_TOO_LARGE
    assert await outcome(store.lease_revoke(12345)) == errors.LEASE_NOT_FOUND


async def test_revoke_deletes_current_attachments_only(store: Store) -> None:
    await store.lease_grant(1, 60)
    await store.lease_grant(2, 60)
    for key, lease in [(b"k3", 1), (b"k1", 1), (b"k2", 1), (b"k4", 2)]:
        await store.put(put(key, lease))
    r = await batch(
        store.put(put(b"k2")),  # detached in the same batch as the revoke
        store.put(put(b"k5", 1)),  # attached in the same batch
        store.put(put(b"k4", 1)),  # moved from lease 2
        store.lease_revoke(1),
    )
    rev = header_rev(r[3], pb.LeaseRevokeResponse)
    assert rev == store.revision == 9
    assert [v.key for v in store.replica.log[-1][1]] == [b"k1", b"k3", b"k4", b"k5"]  # M06
    assert all(v.is_tombstone and v.mod == rev for v in store.replica.log[-1][1])
    assert store.replica.get(b"k2") is not None
    assert store.leases.keys(2) == [] and 1 not in store.leases


async def test_failed_commit_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.lease_grant(1, 60)
    await store.put(put(b"a", 1))

    async def fail(*args: Any, **kwargs: Any) -> None:
        raise BackendError("disk on fire")

    monkeypatch.setattr(store._backend, "commit", fail)
    r = await batch(store.lease_grant(2, 60), store.lease_revoke(1))
    assert r == [errors.TIMEOUT, errors.TIMEOUT]
    assert 2 not in store.leases and store.leases.keys(1) == [b"a"]
    assert store.replica.get(b"a") is not None and store.revision == 2


async def test_leases_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    s = await open_store(tmp_path / "data", clock)
    await s.lease_grant(1, 30)
    await s.lease_grant(2, 40)
    await s.lease_grant(3, 50)
    await s.put(put(b"a", 1))
    await s.put(put(b"b", 2))
    await s.lease_revoke(2)
    await close_store(s)

    s = await Store.open(EmbeddedBackend(str(tmp_path / "data")))
    try:
        assert sorted(lease.id for lease in s.leases) == [1, 3]
        lease = s.leases.get(1)
        assert lease is not None and lease.ttl == 30 and s.leases.keys(1) == [b"a"]
        assert s.leases.keys(3) == []
        now = s.clock()
        assert s.leases.remaining(1, now) in (29, 30)  # the full TTL again (L15)
    finally:
        await close_store(s)


async def test_expiry_through_the_manager(store: Store, clock: Clock) -> None:
    manager = LeaseManager(store, revoke_rate=4)  # two per 500 ms tick
    for lease_id, ttl in [(1, 2), (2, 3), (3, 2), (4, 10), (5, 2)]:
        await store.lease_grant(lease_id, ttl)
        await store.put(put(b"k%d" % lease_id, lease_id))
    rev = store.revision
    clock.now = 1001.99
    assert await manager.expire_once() == 0  # never early
    clock.now = 1002.0
    assert await manager.keepalive(1) == 0  # expired: not revived
    assert (await manager.time_to_live(1, keys=True)).ttl == -1
    assert await manager.expire_once() == 2  # the rate limit: 1 and 3 (deadline, then id)
    assert sorted(lease.id for lease in store.leases) == [2, 4, 5]
    assert store.revision == rev + 2  # one revision per lease with keys
    assert await manager.keepalive(4) == 10
    clock.now += 5
    assert await manager.expire_once() == 2  # 5, then 2
    assert await manager.expire_once() == 0
    assert [lease.id for lease in store.leases] == [4]
    assert (await manager.time_to_live(4, keys=True)).keys == (b"k4",)
    assert await manager.leases() == [4]


async def test_expiry_does_not_revoke_a_lease_granted_again(store: Store, clock: Clock) -> None:
    await store.lease_grant(1, 2)
    await store.put(put(b"a", 1))
    clock.now += 3
    r = await batch(
        store.lease_revoke(1), store.lease_grant(1, 60), store.put(put(b"b", 1)),
        store.lease_expire(1),  # queued by the expiry loop before the client re-granted
    )
    assert r[3] == errors.LEASE_NOT_FOUND
    assert store.leases.keys(1) == [b"b"] and store.replica.get(b"b") is not None
    clock.now += 10
    assert await outcome(store.lease_expire(1)) == errors.LEASE_NOT_FOUND  # 60 s not over
