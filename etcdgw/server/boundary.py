"""The server boundary: where network bytes become requests and exceptions become gRPC statuses.

Every RPC handler is wrapped here, and this is the one place that decides what a client sees when
something goes wrong:

- :class:`~etcdgw.errors.EtcdError` -> its gRPC code and etcd's exact message (contract E01);
- a malformed request -> the codec's :class:`CodecDecodeError` status (INTERNAL
  ``grpc: error unmarshalling request: ...``, what grpc-go, hence etcd, answers);
- any other exception -> logged with its traceback here, and a short UNKNOWN text to the client:
  a traceback or an exception's text may carry paths, keys or credentials (E14).

Requests are read here rather than by grpclib's ``Stream.recv_message``, which buffers a whole
message before anyone can look at its size. Reading the 5-byte gRPC prefix first lets us refuse a
message whose declared length is above the transport limit (2 MiB, T11) without reading it, and a
write request above ``--max-request-bytes`` with etcd's ``request is too large`` (E03) before
decoding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final

import grpclib.server
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from etcdgw import errors
from etcdgw._proto import etcdserverpb
from etcdgw._proto.grpc.health import v1 as health
from etcdgw.errors import EtcdError
from etcdgw.metrics import CallStats, Metrics, code_name
from etcdgw.server.codec import CodecDecodeError, EtcdCodec

__all__ = [
    "INTERNAL_ERROR",
    "Boundary",
    "Call",
    "ServerStream",
    "catalogue",
    "check_metadata",
    "translate_errors",
]

log = logging.getLogger(__name__)

ServerStream = grpclib.server.Stream[Any, Any]
UnaryFunc = Callable[[Any], Awaitable[Any]]
#: Whether a request is a write (and so limited by --max-request-bytes): fixed per method, or
#: decided from the decoded request (a read-only Txn is not a write in etcd).
WriteRule = bool | Callable[[Any], bool]

#: What a client sees for an unexpected failure; the details are in the server log.
INTERNAL_ERROR: Final = errors.internal("etcdgw: internal server error")

_PREFIX_LEN: Final = 5
_SERVICE_BASES: Final = (
    etcdserverpb.KvBase,
    etcdserverpb.WatchBase,
    etcdserverpb.LeaseBase,
    etcdserverpb.ClusterBase,
    etcdserverpb.MaintenanceBase,
    etcdserverpb.AuthBase,
    health.HealthBase,
)


@functools.cache
def catalogue() -> Mapping[str, Handler]:
    """Every method the proto files declare: ``{"/etcdserverpb.KV/Range": Handler(...)}``.

    Taken from the generated service bases so that the set of served paths, their cardinalities
    and message types always match ``proto/``; only the handler functions are ours.
    """
    table: dict[str, Handler] = {}
    for base in _SERVICE_BASES:
        table.update(base().__mapping__())
    return table


@contextlib.contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turn whatever the body raises into the GRPCError the client should see."""
    try:
        yield
    except EtcdError as exc:
        raise GRPCError(Status(exc.code.value), exc.message) from None
    except GRPCError:
        raise  # already a status (CodecDecodeError, transport limits)
    except Exception:
        # The one place an unexpected error is logged; grpclib would otherwise send its own
        # "Internal Server Error" and log it again.
        log.exception("unexpected error serving %s", path)
        raise GRPCError(Status(INTERNAL_ERROR.code.value), INTERNAL_ERROR.message) from None


def check_metadata(metadata: Mapping[str, Any] | None) -> None:
    """etcd's interceptor checks: ``client-api-version`` must be UTF-8 (T17); unknown keys pass."""
    if not metadata:
        return
    version = metadata.get("client-api-version")
    if isinstance(version, str):
        try:
            # The h2 layer decodes header bytes as latin-1 (see server.app), so encoding back
            # gives the exact bytes the client sent.
            version.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise errors.INVALID_CLIENT_API_VERSION from None


class Call:
    """A streaming RPC as its handler sees it: size-checked ``recv`` and ``send``."""

    __slots__ = ("_boundary", "_request_type", "_stream", "_write")

    def __init__(
        self, boundary: Boundary, stream: ServerStream, request_type: type, write: WriteRule
    ) -> None:
        self._boundary = boundary
        self._stream = stream
        self._request_type = request_type
        self._write = write

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._stream.metadata or {}

    @property
    def peer_cert(self) -> dict[str, Any] | None:
        """The verified client certificate (``ssl.getpeercert()`` form), under mutual TLS."""
        cert: dict[str, Any] | None = self._stream.peer.cert()
        return cert

    async def recv(self) -> Any | None:
        """The next request, or None once the client has closed its side."""
        return await self._boundary.read_request(self._stream, self._request_type, self._write)

    async def send(self, message: Any) -> None:
        await self._stream.send_message(message)


class Boundary:
    """Wraps service methods into grpclib handlers that read, limit, translate and count calls."""

    def __init__(
        self,
        *,
        codec: EtcdCodec,
        max_request_bytes: int,
        max_message_bytes: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._codec = codec
        #: Per-method call counters and latencies (``/metrics``).
        self.metrics = metrics if metrics is not None else Metrics()
        self._max_request_bytes = max_request_bytes
        self._max_message_bytes = max_message_bytes
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- shutdown support -------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Unary calls currently being served (streams are long-lived and not counted)."""
        return self._inflight

    async def wait_idle(self) -> None:
        """Return once no unary call is in flight (shutdown drains them before closing)."""
        await self._idle.wait()

    def _begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    # -- reading requests -----------------------------------------------------------------

    async def read_request(
        self, stream: ServerStream, request_type: type, write: WriteRule = False
    ) -> Any | None:
        """Read, limit and decode one length-prefixed message; None at the end of the stream."""
        # grpclib.server.Stream keeps the HTTP/2 stream in ``_stream``; its ``recv_data`` is the
        # only way to read less than a whole message. grpclib is pinned below 0.5 for this.
        h2_stream = stream._stream
        prefix = await _recv_exactly(h2_stream, _PREFIX_LEN, "message prefix")
        if not prefix:
            return None
        flag, length = prefix[0], int.from_bytes(prefix[1:], "big")
        if flag == 1:
            # No decompressor is installed (etcd's clients never compress requests); grpc-go
            # answers UNIMPLEMENTED for an encoding it lacks.
            raise GRPCError(Status.UNIMPLEMENTED, "grpc: compressed requests are not supported")
        if flag != 0:
            raise CodecDecodeError(f"invalid message flag {flag}")
        if length > self._max_message_bytes:
            # grpc-go's text, which is what etcd's clients see from etcd.
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({length} vs. {self._max_message_bytes})",
            )
        if write is True and length > self._max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        body = await _recv_exactly(h2_stream, length, "message")
        if len(body) != length:
            raise CodecDecodeError(f"message truncated: {len(body)} of {length} bytes")
        request = self._codec.decode(body, request_type)
        if callable(write) and length > self._max_request_bytes and write(request):
            raise errors.REQUEST_TOO_LARGE
        return request

    # -- wrapping handlers -----------------------------------------------------------------

    def unary(self, path: str, func: UnaryFunc, *, write: WriteRule) -> Handler:
        """A unary method: ``await func(request)`` returns the response (message or Preencoded)."""
        template = _template(path, Cardinality.UNARY_UNARY)
        request_type = template.request_type
        stats = self.metrics.call(path, template.cardinality)

        async def handle(stream: ServerStream) -> None:
            self._begin()
            started = _counted(stats)
            code = "Unknown"
            try:
                with translate_errors(path):
                    check_metadata(stream.metadata)
                    request = await self.read_request(stream, request_type, write)
                    if request is None:
                        raise CodecDecodeError("no request message")
                    reply = await func(request)
                await stream.send_message(reply)
                code = "OK"
            except GRPCError as exc:
                code = code_name(exc.status)
                raise
            except asyncio.CancelledError:
                code = "Canceled"
                raise
            finally:
                stats.finish(code, time.perf_counter() - started)
                self._end()

        return Handler(handle, template.cardinality, request_type, template.reply_type)

    def streaming(
        self, path: str, func: Callable[[Call], Awaitable[None]], *, write: WriteRule = False
    ) -> Handler:
        """A streaming method: ``await func(call)`` drives the whole stream."""
        template = catalogue()[path]
        request_type = template.request_type
        stats = self.metrics.call(path, template.cardinality)

        async def handle(stream: ServerStream) -> None:
            started = _counted(stats)
            code = "Unknown"
            try:
                with translate_errors(path):
                    check_metadata(stream.metadata)
                    await func(Call(self, stream, request_type, write))
                code = "OK"
            except GRPCError as exc:
                code = code_name(exc.status)
                raise
            except asyncio.CancelledError:
                code = "Canceled"
                raise
            finally:
                stats.finish(code, time.perf_counter() - started)

        return Handler(handle, template.cardinality, request_type, template.reply_type)


def _counted(stats: CallStats) -> float:
    stats.started += 1
    return time.perf_counter()


def _template(path: str, cardinality: Cardinality) -> Handler:
    template = catalogue()[path]
    if template.cardinality is not cardinality:
        raise TypeError(f"{path} is {template.cardinality.name}, not {cardinality.name}")
    return template


async def _recv_exactly(h2_stream: Any, size: int, what: str) -> bytes:
    try:
        data: bytes = await h2_stream.recv_data(size)
    except AssertionError:
        # grpclib's Buffer signals "the stream ended inside the requested bytes" this way.
        raise CodecDecodeError(f"{what} truncated: stream ended early") from None
    return data
