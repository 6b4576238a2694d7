"""Fixtures for service tests: a Gateway running in this process on 127.0.0.1, port 0.

    gateway        a started Gateway over the real embedded store in a temporary data dir
    channel        grpclib Channel to it (etcdserverpb stubs take it)
    raw_channel    grpclib Channel whose codec sends and returns plain bytes (malformed payloads)
    fake_store     installs FakeStore in place of the real Store for the next gateway started:
                   lets a test make the store fail in ways the real one never should
    fake_gateway   a started Gateway over FakeStore
    fake_channel   grpclib Channel to fake_gateway

Calls go through real loopback sockets and grpclib's client, the same wire path as any client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import FakeBackend, FakeStore, RawCodec, gateway_config
from grpclib.client import Channel

import etcdgw.gateway
from etcdgw import Gateway


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_config(tmp_path)) as gw:
        yield gw


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[Channel]:
    host, port = gateway.address
    ch = Channel(host, port)
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
async def raw_channel(gateway: Gateway) -> AsyncIterator[Channel]:
    host, port = gateway.address
    ch = Channel(host, port, codec=RawCodec())
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeStore]]:
    async def open_backend(kind: str, data_dir: str, **_settings: Any) -> FakeBackend:
        return FakeBackend()

    FakeStore.instances = []
    monkeypatch.setattr(etcdgw.gateway, "Store", FakeStore)
    monkeypatch.setattr(etcdgw.gateway, "open_backend", open_backend)
    yield FakeStore


@pytest.fixture
async def fake_gateway(tmp_path: Path, fake_store: type[FakeStore]) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_config(tmp_path)) as gw:
        yield gw


@pytest.fixture
async def fake_channel(fake_gateway: Gateway) -> AsyncIterator[Channel]:
    host, port = fake_gateway.address
    ch = Channel(host, port)
    try:
        yield ch
    finally:
        ch.close()
