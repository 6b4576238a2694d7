"""A small Watch client for tests: one bidirectional ``etcdserverpb.Watch/Watch`` stream.

    async with WatchClient.connect(server) as w:          # or WatchClient(channel)
        created = await w.watch(b"k", prev_kv=True)       # create + its created response
        resp = await w.recv()                              # the next response, whatever it is
        await w.expect_silence()                           # only where nothing may arrive

A reader task moves every response into a queue as soon as it arrives, so ``recv`` returns
responses in stream order and ``expect_silence`` can tell "nothing arrived" from "not read yet".
The stream's end (trailers, or an error status) is a :class:`StreamEnded` from ``recv``.
Responses are betterproto2 ``pb.WatchResponse`` messages, decoded from the wire as a client
would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from etcdgw._proto import etcdserverpb as pb
from etcdgw._proto import mvccpb

from .procs import Server

__all__ = [
    "NODELETE",
    "NOPUT",
    "StreamEnded",
    "WatchClient",
    "event_tuple",
    "is_progress",
    "kv_fields",
    "prefix_end",
    "response_tuple",
]

WATCH = "/etcdserverpb.Watch/Watch"
NOPUT = pb.WatchCreateRequestFilterType.NOPUT
NODELETE = pb.WatchCreateRequestFilterType.NODELETE

#: How long ``recv`` waits by default: generous for a loaded machine, but a hang still fails.
RECV_TIMEOUT = 10.0
#: ``expect_silence`` window: long enough for a server to answer a request it already has.
SILENCE = 0.3


class StreamEnded(AssertionError):
    """The stream ended (``error`` is the GRPCError, or None for a clean end)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__(f"watch stream ended: {error!r}")
        self.error = error


def prefix_end(prefix: bytes) -> bytes:
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\x00"
    p[-1] += 1
    return bytes(p)


def is_progress(r: pb.WatchResponse) -> bool:
    """Go clientv3's classification (W24)."""
    return (
        not r.events
        and not r.created
        and not r.canceled
        and r.compact_revision == 0
        and r.header is not None
        and r.header.revision != 0
    )


def event_tuple(ev: mvccpb.Event) -> tuple[Any, ...]:
    """Every field of an event, for exact comparisons (prev_kv None when absent)."""

    def kv(k: mvccpb.KeyValue | None) -> tuple[Any, ...] | None:
        if k is None:
            return None
        return (k.key, k.create_revision, k.mod_revision, k.version, k.value, k.lease)

    assert ev.kv is not None
    return (int(ev.type), kv(ev.kv), kv(ev.prev_kv))


class WatchClient:
    def __init__(self, channel: Channel, *, owns_channel: bool = False,
                 metadata: dict[str, str] | None = None) -> None:
        self.channel = channel
        self._owns_channel = owns_channel
        self._metadata = metadata
        self._cm: Any = None
        self.stream: Stream[pb.WatchRequest, pb.WatchResponse] | None = None
        self._queue: asyncio.Queue[pb.WatchResponse | StreamEnded] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._running = asyncio.Event()
        self._running.set()
        self.received: list[pb.WatchResponse] = []  # everything recv() returned, in order

    @classmethod
    def connect(cls, server: Server, *, window: int | None = None, **kw: Any) -> WatchClient:
        """A client on its own connection; ``window`` sets the HTTP/2 flow-control windows
        (grpclib's default is 4 MiB), so that a paused reader stops the server sooner."""
        config = None
        if window is not None:
            config = Configuration(http2_connection_window_size=window,
                                   http2_stream_window_size=window)
        return cls(Channel(server.host, server.port, config=config), owns_channel=True, **kw)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> WatchClient:
        self._cm = self.channel.request(
            WATCH, Cardinality.STREAM_STREAM, pb.WatchRequest, pb.WatchResponse,
            metadata=self._metadata,
        )
        self.stream = await self._cm.__aenter__()
        await self.stream.send_request()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.stream is not None
        try:
            while True:
                await self._running.wait()
                msg = await self.stream.recv_message()
                if msg is None:
                    break
                self._queue.put_nowait(msg)
            await self.stream.recv_trailing_metadata()
            self._queue.put_nowait(StreamEnded(None))
        except (GRPCError, StreamTerminatedError, ConnectionError) as exc:
            self._queue.put_nowait(StreamEnded(exc))

    def pause(self) -> None:
        """Stop reading from the connection (after the message being read, if any): HTTP/2
        flow control then stops the server once the window is full. A slow consumer."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.cancel()
        if self._cm is not None:
            with contextlib.suppress(BaseException):
                await self._cm.__aexit__(None, None, None)
        if self._owns_channel:
            self.channel.close()

    async def __aenter__(self) -> WatchClient:
        return await self.open()

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------------------------

    async def send(self, request: pb.WatchRequest) -> None:
        assert self.stream is not None
        await self.stream.send_message(request)

    async def create(self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0,
                     prev_kv: bool = False, filters: Iterable[Any] = (),
                     progress_notify: bool = False, watch_id: int = 0,
                     fragment: bool = False) -> None:
        await self.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, prev_kv=prev_kv,
            filters=list(filters), progress_notify=progress_notify, watch_id=watch_id,
            fragment=fragment,
        )))

    async def watch(self, key: bytes, range_end: bytes = b"", **kw: Any) -> pb.WatchResponse:
        """Create and return its created response (asserted to be one)."""
        await self.create(key, range_end, **kw)
        r = await self.recv()
        assert r.created, f"expected a created response, got {r}"
        return r

    async def cancel(self, watch_id: int) -> None:
        await self.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    async def progress(self) -> None:
        await self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def half_close(self) -> None:
        assert self.stream is not None
        await self.stream.end()

    # -- responses --------------------------------------------------------------------------

    async def recv(self, timeout: float = RECV_TIMEOUT) -> pb.WatchResponse:  # noqa: ASYNC109
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no watch response within {timeout} s") from None
        if isinstance(item, StreamEnded):
            self._queue.put_nowait(item)  # stays ended
            raise item
        self.received.append(item)
        return item

    async def expect_silence(self, duration: float = SILENCE) -> None:
        """Nothing arrives for ``duration`` seconds (only where the contract says so)."""
        try:
            item = await asyncio.wait_for(self._queue.get(), duration)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {item}")

    async def events(self, n: int, watch_id: int | None = None, *,
                     timeout: float = RECV_TIMEOUT,  # noqa: ASYNC109
                     responses: list[pb.WatchResponse] | None = None) -> list[mvccpb.Event]:
        """The next ``n`` events (of ``watch_id`` if given; other watchers' responses are
        skipped, progress responses too). Fails on any cancel or on an extra event."""
        out: list[mvccpb.Event] = []
        while len(out) < n:
            r = await self.recv(timeout)
            if watch_id is not None and r.watch_id != watch_id:
                continue
            assert not r.canceled, f"watch canceled while waiting for events: {r}"
            if responses is not None and r.events:
                responses.append(r)
            out.extend(r.events)
        assert len(out) == n, f"expected {n} events, got {len(out)}: {out}"
        return out


def kv_fields(kv: mvccpb.KeyValue | None) -> tuple[Any, ...] | None:
    if kv is None:
        return None
    return (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


def response_tuple(r: pb.WatchResponse) -> tuple[Any, ...]:
    """A WatchResponse without cluster_id/member_id/raft_term, for comparing two servers."""
    return (
        r.header.revision if r.header is not None else 0,
        r.watch_id,
        r.created,
        r.canceled,
        r.compact_revision,
        r.cancel_reason,
        r.fragment,
        tuple(event_tuple(e) for e in r.events),
    )
