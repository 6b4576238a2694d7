"""Gateway lifecycle: binding (port 0, several listeners), embedding, startup failure, shutdown."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
import uvloop
from gateway_support import FakeStore, gateway_config
from grpclib.client import Channel

from etcdgw import Config, Gateway
from etcdgw._proto import etcdserverpb as pb


async def range_ok(host: str, port: int) -> int:
    channel = Channel(host, port)
    try:
        reply = await pb.KvStub(channel).range(pb.RangeRequest(key=b"k"), timeout=10)
        return int(reply.header.revision)
    finally:
        channel.close()


async def test_port_zero_reports_the_bound_port(gateway: Gateway) -> None:
    host, port = gateway.address
    assert host == "127.0.0.1" and port > 0
    assert gateway.url == f"http://127.0.0.1:{port}"
    assert gateway.urls == (gateway.url,)
    assert gateway.client_urls == (gateway.url,)
    assert await range_ok(host, port) >= 1


async def test_several_listeners(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        listen_client_urls=("http://127.0.0.1:0", "http://127.0.0.1:0"),
        advertise_client_urls=("http://127.0.0.1:0", "http://gw.example:2379"),
    )
    async with Gateway(config) as gw:
        assert len(gw.urls) == 2
        ports = {int(url.rsplit(":", 1)[1]) for url in gw.urls}
        assert len(ports) == 2 and 0 not in ports
        for url in gw.urls:
            assert await range_ok("127.0.0.1", int(url.rsplit(":", 1)[1])) >= 1
        # An advertised port 0 becomes the bound port; explicit URLs are reported as given.
        assert gw.client_urls == (gw.urls[0], "http://gw.example:2379")


async def test_close_is_idempotent_and_ends_serve_forever(tmp_path: Path) -> None:
    gw = Gateway(gateway_config(tmp_path))
    await gw.start()
    serving = asyncio.create_task(gw.serve_forever())
    await asyncio.sleep(0)
    assert not serving.done()
    await asyncio.gather(gw.close(), gw.close())
    await asyncio.wait_for(serving, 5)
    await gw.close()
    host, port = gw.address
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with Gateway(config) as gw:
        channel = Channel(*gw.address)
        put = await pb.KvStub(channel).put(pb.PutRequest(key=b"durable", value=b"v"))
        channel.close()
    async with Gateway(config) as gw:
        channel = Channel(*gw.address)
        reply = await pb.KvStub(channel).range(pb.RangeRequest(key=b"durable"))
        channel.close()
    assert reply.kvs[0].value == b"v"
    assert reply.kvs[0].mod_revision == put.header.revision


async def test_startup_failure_closes_what_was_opened(
    tmp_path: Path, fake_store: type[FakeStore]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = gateway_config(
            tmp_path, listen_client_urls=("http://127.0.0.1:0", f"http://127.0.0.1:{port}")
        )
        gw = Gateway(config)
        with pytest.raises(OSError):
            await gw.start()
    store = fake_store.instances[0]
    assert store.closed and store.backend.closed
    # The first listener was bound before the failure; it is closed again.
    await asyncio.wait_for(gw.serve_forever(), 1)


async def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    from etcdgw import ConfigError

    config = gateway_config(
        tmp_path,
        listen_client_urls=("https://127.0.0.1:0",),
        cert_file=str(tmp_path / "missing.pem"),
        key_file=str(tmp_path / "missing-key.pem"),
    )
    with pytest.raises(ConfigError, match=r"--cert-file .*missing\.pem"):
        await Gateway(config).start()


def test_runs_on_uvloop(tmp_path: Path) -> None:
    async def scenario() -> int:
        async with Gateway(gateway_config(tmp_path)) as gw:
            return await range_ok(*gw.address)

    assert uvloop.run(scenario()) >= 1


# -- graceful shutdown ------------------------------------------------------------------------


class SlowPut(FakeStore):
    """A store whose Put waits for the test to release it."""

    entered: asyncio.Event
    release: asyncio.Event

    async def put(self, req: Any) -> bytes:
        self.entered.set()
        await self.release.wait()
        return await super().put(req)


@pytest.fixture
def slow_store(fake_store: type[FakeStore], monkeypatch: pytest.MonkeyPatch) -> type[SlowPut]:
    import etcdgw.gateway

    SlowPut.instances = []
    SlowPut.entered = asyncio.Event()
    SlowPut.release = asyncio.Event()
    monkeypatch.setattr(etcdgw.gateway, "Store", SlowPut)
    return SlowPut


def grpcio_put(channel: grpc.aio.Channel) -> Any:
    call = channel.unary_unary(
        "/etcdserverpb.KV/Put",
        request_serializer=bytes,
        response_deserializer=pb.PutResponse.parse,
    )
    return call(pb.PutRequest(key=b"k", value=b"v"), timeout=20)


async def test_close_lets_calls_in_flight_finish(tmp_path: Path, slow_store: type[SlowPut]) -> None:
    # grpcio (grpc core) as the client: it handles a graceful GOAWAY the way Go clients do.
    gw = Gateway(gateway_config(tmp_path))
    await gw.start()
    host, port = gw.address
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        call = asyncio.ensure_future(grpcio_put(channel))
        await asyncio.wait_for(slow_store.entered.wait(), 10)
        closing = asyncio.create_task(gw.close(grace=20))
        await asyncio.sleep(0.2)
        assert not closing.done()
        with pytest.raises(OSError):  # no longer accepting connections
            await asyncio.open_connection(host, port)
        slow_store.release.set()
        reply = await asyncio.wait_for(call, 10)
        assert reply.header.revision == FakeStore.revision
        await asyncio.wait_for(closing, 10)
    assert slow_store.instances[0].closed


async def test_close_cancels_calls_after_the_grace_period(
    tmp_path: Path, slow_store: type[SlowPut]
) -> None:
    gw = Gateway(gateway_config(tmp_path))
    await gw.start()
    host, port = gw.address
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        call = asyncio.ensure_future(grpcio_put(channel))
        await asyncio.wait_for(slow_store.entered.wait(), 10)
        await asyncio.wait_for(gw.close(grace=0.2), 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call, 10)
    assert slow_store.instances[0].closed


async def test_embedded_in_a_running_loop_without_context_manager(tmp_path: Path) -> None:
    config = Config(listen_client_urls=("http://127.0.0.1:0",), data_dir=str(tmp_path / "d"))
    gw = Gateway(config)
    await gw.start()
    try:
        assert await range_ok(*gw.address) >= 1
    finally:
        await gw.close()
