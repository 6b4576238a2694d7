"""The server boundary: error translation, request size limits, request metadata.

Contract E01/E14 (errors), T11/N01 and E03 (sizes), T17 (metadata).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from gateway_support import (
    FakeStore,
    expect_error,
    gateway_config,
    grpc_frame,
    h2_call,
    raw_call,
)
from grpclib.client import Channel
from grpclib.const import Status

from etcdgw import Gateway, errors
from etcdgw._proto import etcdserverpb as pb
from etcdgw.errors import EtcdError

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
MAX_MESSAGE = 2_097_152
MAX_REQUEST = 1_572_864

REGISTRY = sorted(
    (name for name, value in vars(errors).items() if isinstance(value, EtcdError)),
)


def put_of_size(size: int, key: bytes = b"big") -> pb.PutRequest:
    """A PutRequest whose encoding is exactly ``size`` bytes."""
    overhead = len(bytes(pb.PutRequest(key=key, value=b"x" * size)))
    request = pb.PutRequest(key=key, value=b"x" * (2 * size - overhead))
    assert len(bytes(request)) == size
    return request


# -- error translation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTRY)
async def test_etcd_errors_reach_the_client_unchanged(fake_channel: Channel, name: str) -> None:
    error: EtcdError = getattr(errors, name)
    FakeStore.instances[0].fail["range"] = error
    raised = await expect_error(pb.KvStub(fake_channel).range(pb.RangeRequest(key=b"k")))
    assert raised.status.value == error.code.value
    assert raised.message == error.message  # E01: byte for byte


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret-token=hunter2 in /etc/etcdgw/keys"),
        KeyError("secret-token"),
        NotImplementedError(),
        ZeroDivisionError("secret-token"),
    ],
)
async def test_unexpected_errors_are_logged_not_leaked(
    fake_channel: Channel,
    caplog: pytest.LogCaptureFixture,
    exc: Exception,
) -> None:
    FakeStore.instances[0].fail["put"] = exc
    with caplog.at_level(logging.ERROR, logger="etcdgw"):
        raised = await expect_error(pb.KvStub(fake_channel).put(pb.PutRequest(key=b"k")))
    assert raised.status is Status.UNKNOWN
    assert raised.message == "etcdgw: internal server error"
    assert "secret" not in (raised.message or "")
    assert "Traceback" not in (raised.message or "")
    # The server log has the whole story, once.
    records = [r for r in caplog.records if r.exc_info is not None]
    assert len(records) == 1
    assert "/etcdserverpb.KV/Put" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[1] is exc
    # ... and the server keeps serving.
    del FakeStore.instances[0].fail["put"]
    await pb.KvStub(fake_channel).put(pb.PutRequest(key=b"k"))


async def test_real_store_errors(channel: Channel) -> None:
    raised = await expect_error(pb.KvStub(channel).range(pb.RangeRequest()))
    assert raised.status is Status.INVALID_ARGUMENT
    assert raised.message == "etcdserver: key is not provided"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\xff",  # key: a length running past the end
        b"\x0a",  # a tag and nothing else
        b"\x08\x01",  # key with the varint wire type
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # an endless varint
    ],
)
async def test_malformed_request(raw_channel: Channel, payload: bytes) -> None:
    raised = await expect_error(raw_call(raw_channel, RANGE, payload))
    # What grpc-go (so etcd) answers for a request it cannot unmarshal.
    assert raised.status is Status.INTERNAL
    assert (raised.message or "").startswith("grpc: error unmarshalling request: ")
    assert "Traceback" not in (raised.message or "")
    assert await raw_call(raw_channel, RANGE, bytes(pb.RangeRequest(key=b"k")))


async def test_unary_call_without_a_message(gateway: Gateway) -> None:
    host, port = gateway.address
    reply = await h2_call(host, port, RANGE, b"")
    assert reply[b"grpc-status"] == b"13"
    assert reply[b"grpc-message"].startswith(b"grpc: error unmarshalling request")


async def test_compressed_request_is_refused(gateway: Gateway) -> None:
    host, port = gateway.address
    body = grpc_frame(bytes(pb.RangeRequest(key=b"k")), compressed=True)
    reply = await h2_call(host, port, RANGE, body, extra_headers=[(b"grpc-encoding", b"gzip")])
    assert reply[b"grpc-status"] == str(Status.UNIMPLEMENTED.value).encode()


# -- sizes ------------------------------------------------------------------------------------


async def test_message_over_2_mib_is_refused_and_the_server_goes_on(
    raw_channel: Channel, channel: Channel
) -> None:
    # Three in a row on one connection: together they exceed its 4 MiB flow-control window,
    # so this also checks that refused bytes are returned to the window.
    for _ in range(3):
        raised = await expect_error(raw_call(raw_channel, PUT, b"\x0a" * (MAX_MESSAGE + 1)))
        assert raised.status is Status.RESOURCE_EXHAUSTED
        assert raised.message == (
            f"grpc: received message larger than max ({MAX_MESSAGE + 1} vs. {MAX_MESSAGE})"
        )
    reply = await raw_call(raw_channel, RANGE, bytes(pb.RangeRequest(key=b"k")))
    assert pb.RangeResponse.parse(reply).header.revision >= 1
    await pb.KvStub(channel).put(pb.PutRequest(key=b"after", value=b"v"))


async def test_read_up_to_2_mib_is_accepted(channel: Channel) -> None:
    # Reads are not raft requests in etcd: only the transport limit applies to them.
    key = b"k" * (MAX_MESSAGE - 4)  # tag (1) + length varint (3) + key
    request = pb.RangeRequest(key=key)
    assert len(bytes(request)) == MAX_MESSAGE
    reply = await pb.KvStub(channel).range(request)
    assert reply.count == 0


async def test_write_over_max_request_bytes_is_too_large(channel: Channel) -> None:
    kv = pb.KvStub(channel)
    raised = await expect_error(kv.put(pb.PutRequest(key=b"big", value=b"x" * 1_600_000)))
    assert raised.status is Status.INVALID_ARGUMENT
    assert raised.message == "etcdserver: request is too large"
    assert (await kv.range(pb.RangeRequest(key=b"big"))).count == 0

    raised = await expect_error(kv.put(put_of_size(MAX_REQUEST + 1)))
    assert raised.message == "etcdserver: request is too large"
    reply = await kv.put(put_of_size(MAX_REQUEST))  # the limit itself is allowed
    assert (await kv.range(pb.RangeRequest(key=b"big"))).kvs[0].mod_revision == (
        reply.header.revision
    )


async def test_txn_size_limit_applies_to_writing_txns_only(channel: Channel) -> None:
    kv = pb.KvStub(channel)
    big_key = b"k" * (MAX_REQUEST + 10)
    read_only = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=big_key))])
    reply = await kv.txn(read_only)
    assert reply.succeeded
    writing = pb.TxnRequest(
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"x" * MAX_REQUEST))]
    )
    raised = await expect_error(kv.txn(writing))
    assert raised.status is Status.INVALID_ARGUMENT
    assert raised.message == "etcdserver: request is too large"


async def test_limits_follow_max_request_bytes(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, max_request_bytes=1000)
    async with Gateway(config) as gw:
        host, port = gw.address
        channel = Channel(host, port)
        try:
            kv = pb.KvStub(channel)
            raised = await expect_error(kv.put(pb.PutRequest(key=b"k", value=b"x" * 2000)))
            assert raised.message == "etcdserver: request is too large"
            await kv.put(pb.PutRequest(key=b"k", value=b"x" * 900))
            # etcd's transport limit is --max-request-bytes + 512 KiB.
            raised = await expect_error(kv.range(pb.RangeRequest(key=b"k" * 600_000)))
            assert raised.status is Status.RESOURCE_EXHAUSTED
            assert raised.message is not None and raised.message.endswith("vs. 525288)")
        finally:
            channel.close()


# -- metadata ---------------------------------------------------------------------------------


async def test_known_and_unknown_metadata_are_accepted(channel: Channel) -> None:
    kv = pb.KvStub(channel)
    metadata = {
        "client-api-version": "3.5",
        "hasleader": "true",
        "source": "cache",  # sent by the k8s cacher
        "x-anything": "ignored",
    }
    reply = await kv.range(pb.RangeRequest(key=b"k"), metadata=metadata)
    assert reply.header.revision >= 1


async def test_non_ascii_utf8_client_api_version_is_accepted(gateway: Gateway) -> None:
    host, port = gateway.address
    body = grpc_frame(bytes(pb.RangeRequest(key=b"k")))
    version = "3.5-é".encode()
    reply = await h2_call(host, port, RANGE, body, extra_headers=[(b"client-api-version", version)])
    assert reply[b"grpc-status"] == b"0"


async def test_invalid_utf8_client_api_version(gateway: Gateway) -> None:
    host, port = gateway.address
    body = grpc_frame(bytes(pb.RangeRequest(key=b"k")))
    bad = [(b"client-api-version", b"3.5\xff\xfe")]
    reply = await h2_call(host, port, RANGE, body, extra_headers=bad)
    assert reply[b"grpc-status"] == str(Status.INVALID_ARGUMENT.value).encode()
    assert reply[b"grpc-message"] == b"etcdserver: invalid client api version"
    # The connection-level h2 layer survived it: a normal call on a new connection works.
    ok = await h2_call(host, port, RANGE, body)
    assert ok[b"grpc-status"] == b"0"
