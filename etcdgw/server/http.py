"""HTTP/1.1 endpoints on the gRPC port, as etcd serves them (contract T20, HT01-HT04).

etcd multiplexes one client port: gRPC (HTTP/2) and plain HTTP/1.1 (``/health``, ``/version``,
``/metrics``, ...). Here every accepted connection starts in :class:`Sniffer`:

- under TLS the ALPN choice decides: ``h2`` -> gRPC, ``http/1.1`` -> HTTP;
- otherwise (h2c, or TLS without ALPN) the first bytes decide: the HTTP/2 client preface
  ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` -> grpclib's protocol, anything else -> HTTP/1.1.

The HTTP side is deliberately small: GET only (405 with ``Allow: GET`` otherwise, 404 for unknown
paths, Go's texts), keep-alive, no request bodies (a body is read and dropped). Endpoints:

- ``/health``: ``{"health":"true","reason":""}`` or 503 ``{"health":"false","reason":...}`` when
  an alarm is active (``?exclude=NOSPACE`` ignores one) or a Range fails; ``?serializable=true``
  reads without the linearizable barrier. Same JSON and checks as etcd's etcdhttp/health.go.
- ``/livez`` and ``/readyz`` (etcd 3.5.11+): Kubernetes-style checks, ``ok`` or 503 with
  ``[-]<check> failed: <reason>`` lines; ``?verbose``, ``?exclude=<check>``, and one check per
  path (``/readyz/linearizable_read``, ...).
- ``/version``: ``{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}`` (the Status version).
- ``/metrics``: Prometheus text (:mod:`etcdgw.metrics`).

``--listen-metrics-urls`` serves the same handler on separate plain-HTTP listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from grpclib.protocol import H2Protocol

from etcdgw import errors
from etcdgw._proto import etcdserverpb
from etcdgw.alarms import CORRUPT, NOSPACE, Alarms, alarm_name
from etcdgw.metrics import Metrics
from etcdgw.server.app import GrpcServer
from etcdgw.server.codec import EtcdCodec
from etcdgw.store import Store
from etcdgw.version import ETCD_API_VERSION, ETCD_VERSION

__all__ = ["HttpApi", "HttpConnection", "MuxServer", "Sniffer", "start_http_listener"]

log = logging.getLogger(__name__)

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD_BYTES: Final = 64 * 1024
#: Longest request line accepted (Go's default header limit is 1 MiB; ours is smaller).
MAX_LINE_BYTES: Final = 8 * 1024
#: The start of a request line: a method token and a space. Anything else is not HTTP/1.x, and
#: the connection is answered 400 and closed at once instead of waiting for a header end.
_REQUEST_START: Final = re.compile(rb"^[A-Z]{1,16}( |$)")
_REQUEST_LINE: Final = re.compile(r"^[A-Z]{1,16} \S+ HTTP/1\.[01]$")
#: etcd's request timeout (N02): how long a health Range may take.
CHECK_TIMEOUT: Final = 7.0
_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
Response = tuple[int, list[tuple[str, str]], bytes]
Check = Callable[[], Awaitable[str | None]]  # None when healthy, else the reason
Route = Callable[[str, dict[str, list[str]]], Awaitable[Response]]


class HttpApi:
    """The endpoints: ``await api.handle(method, target)`` -> (status, headers, body)."""

    def __init__(self, store: Store, alarms: Alarms, metrics: Metrics) -> None:
        self._store = store
        self._alarms = alarms
        self._metrics = metrics
        self._livez: dict[str, Check] = {"serializable_read": self._serializable_read}
        self._readyz: dict[str, Check] = {
            "data_corruption": self._data_corruption,
            "serializable_read": self._serializable_read,
            "linearizable_read": self._linearizable_read,
            "non_learner": self._non_learner,
        }

    async def handle(self, method: str, target: str) -> Response:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        route = self._route(path)
        if route is None:
            return 404, [("Content-Type", _TEXT)], b"404 page not found\n"
        if method != "GET":
            return 405, [("Allow", "GET"), ("Content-Type", _TEXT)], b"Method Not Allowed\n"
        return await route(path, query)

    def _route(self, path: str) -> Route | None:
        if path == "/health":
            return self._health
        if path == "/version":
            return self._version
        if path == "/metrics":
            return self._metrics_page
        for name, checks in (("livez", self._livez), ("readyz", self._readyz)):
            if path == f"/{name}" or (
                path.startswith(f"/{name}/") and path[len(name) + 2 :] in checks
            ):
                return self._probe
        return None

    # -- /health (etcd's JSON) --------------------------------------------------------------

    async def _health(self, path: str, query: dict[str, list[str]]) -> Response:
        excluded = {name for name in query.get("exclude", []) if name}
        serializable = query.get("serializable", [""])[0] == "true"
        reason = ""
        for _, alarm in self._alarms.list():
            if alarm_name(alarm) not in excluded:
                reason = f"ALARM {alarm_name(alarm) if alarm in (NOSPACE, CORRUPT) else 'UNKNOWN'}"
                break
        if not reason:
            failed = await self._range(serializable)
            if failed is not None:
                reason = f"RANGE ERROR:{failed}"
        body = json.dumps(
            {"health": "false" if reason else "true", "reason": reason}, separators=(",", ":")
        ).encode()
        if reason:
            return 503, [("Content-Type", _TEXT)], body + b"\n"
        return 200, [("Content-Type", _TEXT)], body

    # -- /livez, /readyz (Kubernetes-style) -------------------------------------------------

    async def _probe(self, path: str, query: dict[str, list[str]]) -> Response:
        name, _, only = path.strip("/").partition("/")
        checks = self._livez if name == "livez" else self._readyz
        headers = [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")]
        if only:
            reason = await checks[only]()
            if reason is None:
                return 200, headers, b"ok\n"
            return 503, headers, f"[-]{only} failed: {reason}\n".encode()
        excluded = {e for value in query.get("exclude", []) for e in value.split(",") if e}
        lines: list[str] = []
        failed = False
        for check_name, check in checks.items():
            if check_name in excluded:
                lines.append(f"[+]{check_name} excluded: ok")
                continue
            reason = await check()
            if reason is None:
                lines.append(f"[+]{check_name} ok")
            else:
                failed = True
                lines.append(f"[-]{check_name} failed: {reason}")
        unknown = sorted(excluded - set(checks))
        if unknown:
            names = ", ".join(f'"{u}"' for u in unknown)
            lines.append(f"warn: some health checks cannot be excluded: no matches for {names}")
        if failed:
            lines.append(f"{name} check failed")
            return 503, headers, ("\n".join(lines) + "\n").encode()
        if "verbose" not in query:
            return 200, headers, b"ok\n"
        lines.append(f"{name} check passed")
        return 200, headers, ("\n".join(lines) + "\n").encode()

    async def _data_corruption(self) -> str | None:
        return "alarm activated: CORRUPT" if self._alarms.active(CORRUPT) else None

    async def _serializable_read(self) -> str | None:
        return await self._range(True)

    async def _linearizable_read(self) -> str | None:
        return await self._range(False)

    async def _non_learner(self) -> str | None:
        return None  # the gateway is a voting member, never a learner

    async def _range(self, serializable: bool) -> str | None:
        """None if a Range is served, else the error text (etcd's checkAPI)."""
        request = etcdserverpb.RangeRequest(
            key=b"health", keys_only=True, limit=1, serializable=serializable
        )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                self._alarms.check_corrupt()
                await self._store.range(request)
        except errors.EtcdError as exc:
            return exc.message
        except TimeoutError:
            return errors.TIMEOUT.message
        except Exception as exc:  # the probe reports, never raises
            log.warning("health range failed: %r", exc)
            return "etcdgw: internal server error"
        return None

    # -- /version, /metrics -----------------------------------------------------------------

    async def _version(self, path: str, query: dict[str, list[str]]) -> Response:
        body = json.dumps(
            {"etcdserver": ETCD_VERSION, "etcdcluster": f"{ETCD_API_VERSION}.0"},
            separators=(",", ":"),
        ).encode()
        return 200, [("Content-Type", "application/json")], body

    async def _metrics_page(self, path: str, query: dict[str, list[str]]) -> Response:
        body = self._metrics.render().encode()
        return 200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests served one after another (keep-alive)."""

    def __init__(self, api: HttpApi, registry: weakref.WeakSet[HttpConnection]) -> None:
        self._api = api
        self._buf = bytearray()
        self._eof = False
        self._more = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self.busy = False
        self._tls = False
        registry.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._tls = transport.get_extra_info("ssl_object") is not None
        self._task = asyncio.ensure_future(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._more.set()

    def eof_received(self) -> bool:
        self._eof = True
        self._more.set()
        # Keep the write side open for the answer in progress (TLS cannot half-close).
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._more.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._transport = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def _read_head(self) -> bytes | None:
        while True:
            if self._buf and not _REQUEST_START.match(self._buf[:17]):
                raise _BadRequest(400)
            line_end = self._buf.find(b"\r\n")
            if line_end > MAX_LINE_BYTES or (line_end < 0 and len(self._buf) > MAX_LINE_BYTES):
                raise _BadRequest(400)
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buf[:end])
                del self._buf[: end + 4]
                return head
            if len(self._buf) > MAX_HEAD_BYTES:
                raise _BadRequest(431)
            if self._eof:
                return None
            self._more.clear()
            await self._more.wait()

    async def _skip_body(self, length: int) -> None:
        while len(self._buf) < length:
            if self._eof:
                raise _BadRequest(400)
            self._more.clear()
            await self._more.wait()
        del self._buf[:length]

    async def _serve(self) -> None:
        try:
            while True:
                keep_alive = await self._one()
                if not keep_alive:
                    break
        except _BadRequest as exc:
            self._write(exc.status, [("Content-Type", _TEXT)], b"", keep_alive=False)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("HTTP connection failed")
        self.close()

    async def _one(self) -> bool:
        head = await self._read_head()
        if head is None:
            return False
        self.busy = True
        try:
            lines = head.decode("latin-1").split("\r\n")
            if not _REQUEST_LINE.match(lines[0]):
                raise _BadRequest(400)
            method, target, version = lines[0].split(" ")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadRequest(400)
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise _BadRequest(400)  # nothing here takes a body
            try:
                await self._skip_body(int(headers.get("content-length", "0")))
            except ValueError:
                raise _BadRequest(400) from None
            connection = headers.get("connection", "").lower()
            keep_alive = (
                connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            )
            status, out_headers, body = await self._api.handle(method, target)
            self._write(status, out_headers, b"" if method == "HEAD" else body, keep_alive)
            return keep_alive
        finally:
            self.busy = False

    def _write(
        self, status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        if not keep_alive:
            lines.append("Connection: close")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Sniffer(asyncio.Protocol):
    """Hands a new connection to gRPC or HTTP/1.1 (see the module docstring)."""

    def __init__(
        self,
        grpc: Callable[[], asyncio.Protocol],
        http: Callable[[], asyncio.Protocol],
    ) -> None:
        self._grpc = grpc
        self._http = http
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            if alpn == "h2":
                self._choose(self._grpc())
            elif alpn == "http/1.1":
                self._choose(self._http())

    def _choose(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        assert self._transport is not None
        inner.connection_made(self._transport)
        if self._buf:
            data, self._buf = self._buf, b""
            inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buf += data
        n = min(len(self._buf), len(H2_PREFACE))
        if self._buf[:n] != H2_PREFACE[:n]:
            self._choose(self._http())
        elif len(self._buf) >= len(H2_PREFACE):
            self._choose(self._grpc())

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None  # closed before saying anything

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class MuxServer(GrpcServer):
    """A client-URL listener: gRPC and, with ``http``, the HTTP endpoints on the same port."""

    def __init__(
        self, handlers: Collection[Any], *, codec: EtcdCodec, http: HttpApi | None = None
    ) -> None:
        super().__init__(handlers, codec=codec)
        self._http = http
        self._http_connections: weakref.WeakSet[HttpConnection] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        http = self._http
        if http is None:
            return super()._protocol_factory()
        connections = self._http_connections
        sniffer = Sniffer(super()._protocol_factory, lambda: HttpConnection(http, connections))
        return sniffer  # type: ignore[return-value]  # grpclib only hands it to the loop

    def announce_shutdown(self) -> None:
        super().announce_shutdown()
        for connection in list(self._http_connections):
            if not connection.busy:
                connection.close()

    def close_connections(self) -> None:
        super().close_connections()
        for connection in list(self._http_connections):
            connection.close()


class HttpListener:
    """A plain-HTTP listener (``--listen-metrics-urls``)."""

    def __init__(self, server: asyncio.Server, connections: weakref.WeakSet[HttpConnection]):
        self.server = server
        self._connections = connections

    @property
    def port(self) -> int:
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        self.server.close()
        for connection in list(self._connections):
            connection.close()
        await self.server.wait_closed()


async def start_http_listener(api: HttpApi, host: str, port: int) -> HttpListener:
    connections: weakref.WeakSet[HttpConnection] = weakref.WeakSet()
    server = await asyncio.get_running_loop().create_server(
        lambda: HttpConnection(api, connections), host, port, reuse_address=True
    )
    return HttpListener(server, connections)
