"""Fault injection inside the Cosmos test server (``--faults``, support/cosmos_server_faults.py).

First each action against the real azure-cosmos SDK, under the project's request layer
(etcdgw.backends.cosmos.client.Container) or bare: an armed 429 is retried and then Throttled, a
503 likewise and never executed, a lost batch response leaves the batch applied while the client
got an error, a delay and a hang, ``count``/``probability``/``clear``, and SIGSTOP/SIGCONT of the
server (requests stall, then succeed). Then ``etcdgw serve --backend cosmos`` processes under
those faults: a 429 storm on every batch for ~2 s, and a lost batch response.

The server is this module's own (faults on); every test starts and ends with no rule armed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cosmos import LocalCosmos, gateway_args, new_database, settings_for, start_local_cosmos
from support.cosmos_server_faults import FaultsError, ServerFaults
from support.driver import Failure, GrpcDriver
from support.procs import Server, start_etcdgw

from etcdgw._proto import etcdserverpb as pb

pytestmark = pytest.mark.timeout(60)

TOO_MANY_REQUESTS = Failure(8, "etcdserver: too many requests")  # RESOURCE_EXHAUSTED
TIMED_OUT = Failure(14, "etcdserver: request timed out")  # UNAVAILABLE
@pytest.fixture(scope="module")
def cosmos() -> Iterator[LocalCosmos]:
    import os

    if os.environ.get("COSMOS_TEST_ENDPOINT"):
        pytest.skip("fault injection needs the local Cosmos test server")
    server = start_local_cosmos(faults=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faults(cosmos: LocalCosmos) -> Iterator[ServerFaults]:
    f: ServerFaults = cosmos.faults
    f.clear()
    yield f
    cosmos.resume()  # a test that failed while the server was paused
    f.clear()


@pytest.fixture
async def container(cosmos: LocalCosmos) -> AsyncIterator[Any]:
    """The project's request layer on a fresh database: ``await container(**settings)``."""
    from etcdgw.backends.cosmos.client import Container

    database, name = "t" + uuid.uuid4().hex[:8], "c" + uuid.uuid4().hex[:8]
    opened: list[Container] = []

    async def factory(**overrides: Any) -> Container:
        c = Container(settings_for(cosmos.url, database=database, container=name, **overrides))
        await c.open()
        opened.append(c)
        return c

    yield factory
    for c in opened:
        await c.close()


def doc(doc_id: str | None = None) -> dict[str, Any]:
    from etcdgw.backends.cosmos.model import PK

    return {"id": doc_id or "d" + uuid.uuid4().hex[:8], "pk": PK, "type": "test"}


# ---------------------------------------------------------------------------------------------
# the control endpoint


def test_control_endpoint(faults: ServerFaults, cosmos_endpoint: str) -> None:
    a = faults.arm("batch", "status", status=429, retry_after_ms=50, count=-1)
    b = faults.arm("write", "delay", delay_ms=10, probability=0.5, db="x")
    rules = {r["id"]: r for r in faults.rules()}
    assert rules[a] | {"id": a} == {
        "id": a, "match": "batch", "action": "status", "status": 429, "substatus": 3200,
        "retryAfterMs": 50, "count": -1, "probability": 1, "delayMs": 0, "db": None, "fired": 0}
    assert (rules[b]["db"], rules[b]["probability"], rules[b]["delayMs"]) == ("x", 0.5, 10)
    faults.disarm(a)
    assert [r["id"] for r in faults.rules()] == [b]
    bad: dict[str, Any]
    for bad in ({"status": 200}, {"count": -2}, {"probability": 2.0}):
        with pytest.raises(FaultsError, match="400"):
            rule: dict[str, Any] = {"status": 429, **bad}
            faults.arm("batch", "status", **rule)
    with pytest.raises(ValueError):
        faults.arm("everything", "lose")
    assert faults.clear() == 1 and faults.rules() == []
    assert set(faults.seen()) == {"batch", "feed", "query", "meta-read", "read", "write"}
    # Without --faults there is no such endpoint (the session's server): the router's 400.
    with pytest.raises(FaultsError, match="no route"):
        ServerFaults(cosmos_endpoint).rules()


# ---------------------------------------------------------------------------------------------
# each action against the SDK


async def test_429_is_retried_then_throttled(faults: ServerFaults, container: Any) -> None:
    from azure.cosmos.aio import CosmosClient

    from etcdgw.backends.base import Throttled

    c = await container(max_retries=2)
    # The bare SDK (its default throttling retries): two 429s, then the write goes through.
    rule = faults.arm("write", "status", status=429, retry_after_ms=10, count=2)
    async with CosmosClient(c.s.endpoint, credential=c.s.key, connection_verify=False) as client:
        raw = client.get_database_client(c.s.database).get_container_client(c.s.container)
        await raw.upsert_item(doc("bare"))
    assert faults.fired(rule) == 2
    assert await c.read("bare") is not None
    # The project's layer retries 429s itself (max_retries=2: three attempts), then Throttled;
    # the batch was never executed.
    rule = faults.arm("batch", "status", status=429, retry_after_ms=10, count=-1)
    with pytest.raises(Throttled, match="TooManyRequests"):
        await c.batch([("create", (doc("throttled"),))])
    assert faults.fired(rule) == 3
    faults.clear()
    assert await c.read("throttled") is None


async def test_503_is_not_executed(faults: ServerFaults, container: Any) -> None:
    from etcdgw.backends.base import BackendError

    c = await container(max_retries=0)
    # The SDK retries a 503 once itself, after 500 ms (writes included: a 503 means "not
    # processed"), under the project's own retries.
    rule = faults.arm("write", "status", status=503, count=-1)
    with pytest.raises(BackendError, match="ServiceUnavailable"):
        await c.upsert(doc("unavailable"))
    assert faults.fired(rule) == 2
    faults.disarm(rule)
    assert await c.read("unavailable") is None
    rule = faults.arm("meta-read", "status", status=503, count=1)
    assert await c.read("meta") is None  # retried by the SDK: answered (404: no meta here)
    assert faults.fired(rule) == 1


async def test_lost_batch_response_leaves_the_batch_applied(
        faults: ServerFaults, container: Any) -> None:
    from etcdgw.backends.cosmos.client import OutcomeUnknown

    c = await container(max_retries=0, request_timeout=2.0)
    rule = faults.arm("batch", "lose")
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="Server disconnected"):
        await c.batch([("create", (doc("lost"),))])
    assert time.monotonic() - t0 < 1.5  # a reset, not the request timeout
    assert faults.fired(rule) == 1
    got = await c.read("lost")
    assert got is not None and got["type"] == "test"  # the batch was applied
    assert len(await c.batch([("upsert", (doc("next"),))])) == 1  # the pool recovered


async def test_lost_batch_response_is_an_unknown_outcome(
        faults: ServerFaults, container: Any) -> None:
    """With its retries on, the project's layer must not resend a write whose answer was lost:
    OutcomeUnknown, for the commit to resolve."""
    from etcdgw.backends.cosmos.client import OutcomeUnknown

    c = await container(request_timeout=2.0)
    faults.arm("batch", "lose")
    with pytest.raises(OutcomeUnknown):
        await c.batch([("create", (doc("unknown"),))])
    got = await c.read("unknown")
    assert got is not None and got["type"] == "test"  # applied, once: not resent


async def test_delay_and_hang(faults: ServerFaults, container: Any) -> None:
    from etcdgw.backends.base import BackendError

    c = await container(max_retries=0, request_timeout=0.5)
    await c.upsert(doc("slow"))
    faults.arm("read", "delay", delay_ms=300)
    t0 = time.monotonic()
    assert (await c.read("slow") or {}).get("id") == "slow"
    assert time.monotonic() - t0 >= 0.3
    rule = faults.arm("read", "hang")
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="TimeoutError"):
        await c.read("slow")
    assert 0.5 <= time.monotonic() - t0 < 2.0  # the project's request timeout
    assert faults.fired(rule) == 1
    assert (await c.read("slow") or {}).get("id") == "slow"


async def test_count_probability_and_clear(faults: ServerFaults, container: Any) -> None:
    from etcdgw.backends.base import Throttled

    c = await container(max_retries=0)
    await c.upsert(doc("k"))
    rule = faults.arm("read", "status", status=429, count=2)
    for _ in range(2):
        with pytest.raises(Throttled):
            await c.read("k")
    assert await c.read("k") is not None  # the third is not throttled: count honoured
    assert [(r["id"], r["fired"]) for r in faults.rules()] == [(rule, 2)]  # exhausted, listed
    never = faults.arm("read", "status", status=429, count=-1, probability=0.0)
    for _ in range(5):
        assert await c.read("k") is not None
    assert faults.fired(never) == 0
    assert faults.clear() == 2
    half = faults.arm("read", "status", status=429, count=-1, probability=0.5)
    throttled = 0
    for _ in range(40):
        try:
            await c.read("k")
        except Throttled:
            throttled += 1
    assert throttled == faults.fired(half) and 5 <= throttled <= 35
    faults.arm("read", "status", status=429, count=-1)
    with pytest.raises(Throttled):
        await c.read("k")
    faults.clear()
    assert await c.read("k") is not None  # cleared: served again
    # Other databases' requests do not match a rule with db=.
    faults.arm("any", "status", status=429, count=-1, db="elsewhere")
    assert await c.read("k") is not None


async def test_pause_stalls_requests_and_resume_serves_them(
        cosmos: LocalCosmos, faults: ServerFaults, container: Any) -> None:
    c = await container(request_timeout=10.0)
    await c.upsert(doc("p"))
    cosmos.pause()
    try:
        read = asyncio.ensure_future(c.read("p"))
        done, _ = await asyncio.wait({read}, timeout=0.5)
        assert not done, "a request was answered by a stopped server"
    finally:
        cosmos.resume()
    got = await asyncio.wait_for(read, 5.0)
    assert got is not None and got["id"] == "p"


# ---------------------------------------------------------------------------------------------
# etcdgw gateway processes under faults


@pytest.fixture
async def gateway(cosmos: LocalCosmos, tmp_path: Path) -> AsyncIterator[tuple[Server, str]]:
    """An ``etcdgw serve --backend cosmos`` process on a database of its own."""
    database = new_database()
    server = await asyncio.to_thread(start_etcdgw, tmp_path / "gw", name="faulty",
                                     extra_args=gateway_args(cosmos.url, database))
    try:
        yield server, database
    finally:
        server.stop()  # must still exit 0 within 10 s of SIGTERM


def ok(outcome: Any) -> Any:
    assert not isinstance(outcome, Failure), outcome
    return outcome


async def timed(coro: Any, limit: float = 8.0) -> Any:
    """``coro``, which must answer within ``limit`` seconds (a hang fails the test)."""
    t0 = time.monotonic()
    out = await asyncio.wait_for(coro, limit)
    return out, time.monotonic() - t0


async def test_gateway_under_a_429_storm_on_batches(
        gateway: tuple[Server, str], faults: ServerFaults) -> None:
    """Every commit batch throttled for ~2 s with four writers: each write fails
    RESOURCE_EXHAUSTED, promptly, none applied; reads are served throughout. Then three 429s
    only: the write succeeds after retries. Nothing hangs and the state is exactly the
    acknowledged writes."""
    server, database = gateway
    kv = GrpcDriver.connect(server)
    try:
        base = ok(await kv.put(pb.PutRequest(key=b"/storm/base", value=b"0"))).header.revision
        storm = await faults.aarm("batch", "status", status=429, retry_after_ms=20, count=-1,
                                  db=database)
        outcomes: list[tuple[Any, float]] = []
        end = time.monotonic() + 2.0

        async def writer(i: int) -> int:
            j = 0
            while time.monotonic() < end:
                outcomes.append(await timed(kv.put(pb.PutRequest(key=b"/storm/w%d" % i,
                                                                 value=b"%d" % j))))
                j += 1
            return j

        async def reader() -> int:
            n = 0
            while time.monotonic() < end:
                r, _ = await timed(kv.range(pb.RangeRequest(key=b"/storm/base")))
                assert [kv.value for kv in ok(r).kvs] == [b"0"]
                n += 1
            return n

        reads = (await asyncio.gather(reader(), *(writer(i) for i in range(4))))[0]
        fired = await faults.afired(storm)
        await faults.adisarm(storm)
        assert outcomes and reads > 0
        assert {o for o, _ in outcomes} == {TOO_MANY_REQUESTS}, outcomes
        assert max(s for _, s in outcomes) < 3.0  # bounded: 6 attempts x ~20 ms retry-after
        assert fired >= len(outcomes)
        # A short burst: three 429s, then the commit goes through on the project's retries.
        burst = await faults.aarm("batch", "status", status=429, retry_after_ms=20, count=3,
                                  db=database)
        after, _ = await timed(kv.put(pb.PutRequest(key=b"/storm/after", value=b"1")))
        assert ok(after).header.revision == base + 1  # nothing of the storm was applied
        assert await faults.afired(burst) == 3
        r = ok(await kv.range(pb.RangeRequest(key=b"/storm/", range_end=b"/storm0")))
        assert [(x.key, x.mod_revision) for x in r.kvs] == [
            (b"/storm/after", base + 1), (b"/storm/base", base)]
    finally:
        await kv.close()
    assert "Traceback" not in server.log_tail(400), server.log_tail(60)


async def test_gateway_resolves_a_lost_batch_response(
        gateway: tuple[Server, str], faults: ServerFaults) -> None:
    """A Put, then a create-if-absent Txn, each with its commit batch applied and the response
    lost. The gateway answers promptly and keeps serving; it must resolve the outcome: the
    client gets success (or a timeout: unknown), the write is applied once, a Txn never answers
    "already created" for the key its own batch created, and a later linearizable read agrees
    with what the client was told."""
    server, database = gateway
    kv = GrpcDriver.connect(server)
    try:
        base = ok(await kv.put(pb.PutRequest(key=b"/lost/base", value=b"0"))).header.revision

        # 1. Put: applied once, at the revision the client was given (or unknown: a timeout).
        rule = await faults.aarm("batch", "lose", db=database)
        put, _ = await timed(kv.put(pb.PutRequest(key=b"/lost/put", value=b"once")), 15.0)
        assert await faults.afired(rule) == 1
        r = ok(await kv.range(pb.RangeRequest(key=b"/lost/put")))  # linearizable
        got = [(x.value, x.create_revision, x.mod_revision, x.version) for x in r.kvs]
        if isinstance(put, Failure):
            assert put == TIMED_OUT, put
            assert got in ([], [(b"once", base + 1, base + 1, 1)]), got
        else:
            assert (put.header.revision, got) == (base + 1, [(b"once", base + 1, base + 1, 1)])
        base = r.header.revision

        # 2. create-if-absent Txn: succeeded, once.
        key = b"/lost/created"
        rule = await faults.aarm("batch", "lose", db=database)
        create = pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.CompareCompareTarget.CREATE,
                                result=pb.CompareCompareResult.EQUAL, create_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"mine"))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))])
        txn, _ = await timed(kv.txn(create), 15.0)
        assert await faults.afired(rule) == 1
        r = ok(await kv.range(pb.RangeRequest(key=key)))
        created = [(x.value, x.mod_revision, x.version) for x in r.kvs]
        if isinstance(txn, Failure):
            assert txn == TIMED_OUT, txn
            assert created in ([], [(b"mine", base + 1, 1)]) and r.header.revision <= base + 1
        else:
            assert txn.succeeded, txn
            assert (txn.header.revision, created) == (base + 1, [(b"mine", base + 1, 1)])

        # Still serving, with no fault armed.
        after = ok(await kv.put(pb.PutRequest(key=b"/lost/after", value=b"1")))
        assert after.header.revision == r.header.revision + 1
    finally:
        await kv.close()
    assert "Traceback" not in server.log_tail(400), server.log_tail(60)
