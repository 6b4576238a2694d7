"""The gRPC server: every etcd service on grpclib, with etcd's transport behaviour.

:func:`build_services` assembles the servables (one per service module, plus UNIMPLEMENTED for
the methods nobody serves yet); :class:`GrpcServer` is grpclib's ``Server`` adjusted where its
defaults differ from what etcd clients rely on:

- h2 advertises and enforces MAX_CONCURRENT_STREAMS = 100, and treats the 101st stream as a
  connection error: every call on the connection dies. kube-apiserver multiplexes its watches
  and calls over few connections; etcd allows 2^32-1 streams (T14, N04).
- Header bytes are decoded as latin-1 rather than ascii: h2 raises a bare UnicodeDecodeError
  (not a protocol error) on a non-ASCII header value, which would drop the whole connection
  instead of answering ``invalid client api version`` on one call (T17). latin-1 maps every
  byte, so the boundary can recover the exact bytes.
- A path nobody serves gets a proper UNIMPLEMENTED response (see FallbackMapping).
- Shutdown can drain: stop accepting, tell clients with GOAWAY to open no new streams, let the
  calls in flight finish, then close (grpclib's own ``close()`` cancels everything at once).

Client keepalive pings need nothing: h2 acknowledges every PING and grpclib never sends GOAWAY
for them, at any rate (T15). grpclib's server keepalive defaults (ping after 2 h idle, 20 s
timeout, only while streams are open) match etcd's (T16).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, cast

import grpclib.server
from grpclib.config import Configuration
from grpclib.protocol import Connection, EventsProcessor, H2Protocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from etcdgw.alarms import Alarms
from etcdgw.config import Config
from etcdgw.lease.manager import LeaseManager
from etcdgw.server.boundary import Boundary
from etcdgw.server.cluster import Cluster
from etcdgw.server.codec import EtcdCodec
from etcdgw.server.kv import KV
from etcdgw.server.lease import Lease
from etcdgw.server.maintenance import Health, Maintenance
from etcdgw.server.unimplemented import FallbackMapping, Unimplemented
from etcdgw.server.watch import Watch
from etcdgw.store import Store
from etcdgw.watch.hub import WatchHub

__all__ = ["MAX_CONCURRENT_STREAMS", "GrpcServer", "build_services", "server_ssl_context"]

log = logging.getLogger(__name__)

#: etcd's grpc.MaxConcurrentStreams (math.MaxUint32); the largest value the setting can carry.
MAX_CONCURRENT_STREAMS: Final = 2**32 - 1
_MAX_STREAM_ID: Final = 2**31 - 1


def build_services(
    store: Store,
    boundary: Boundary,
    config: Config,
    client_urls: Callable[[], tuple[str, ...]],
    db_size: Callable[[], tuple[int, int]],
    hub: WatchHub,
    leases: LeaseManager | None = None,
    *,
    alarms: Alarms | None = None,
    backend: Any = None,
    peers: Callable[[], Awaitable[list[tuple[int, str, list[str]]]]] | None = None,
) -> list[Any]:
    """Servables for the six etcd services and grpc.health.v1, covering every declared path.

    ``alarms``: the gateway's alarm table and space quota; every service that grows the store
    checks it first (KV: ``check_put``/``check_txn``; LeaseGrant: ``alarms.check_lease_grant()``).
    """
    if alarms is None:
        alarms = Alarms(store.member_id, config.quota_bytes, db_size)
    served: list[Any] = [
        KV(store, boundary, alarms),
        Watch(hub, boundary),
        *([Lease(store, leases, boundary, alarms)] if leases is not None else []),
        Cluster(store, boundary, name=config.name, client_urls=client_urls, peers=peers),
        Maintenance(store, boundary, db_size=db_size, alarms=alarms, backend=backend),
        Health(boundary),
    ]
    implemented: set[str] = set()
    for servable in served:
        implemented.update(servable.__mapping__())
    return [*served, Unimplemented(implemented)]


def server_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS as etcd serves it: TLS >= 1.2, ALPN h2 (T19), client certificates when configured."""
    assert config.cert_file is not None and config.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # grpc-go >= 1.67 refuses a TLS server that does not select h2 by ALPN; http/1.1 is for
    # the HTTP endpoints served on the same port (etcdgw.server.http tells them apart).
    context.set_alpn_protocols(["h2", "http/1.1"])
    # HTTP/2 forbids TLS 1.2 ciphers other than ephemeral-key AEAD (RFC 9113 9.2.2); Go and
    # grpc core clients all offer these. TLS 1.3 suites are unaffected by this call.
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.load_cert_chain(config.cert_file, config.key_file)
    if config.requires_client_cert:
        assert config.trusted_ca_file is not None
        context.load_verify_locations(cafile=config.trusted_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _CoalescingWriter:
    """The transport as grpclib writes to it: writes made during one event-loop step are
    joined and sent once, at the end of the step.

    grpclib writes each unary response as three pieces (headers, message, trailers), each a
    send() system call; with many calls in flight that is most of the server's time (profile
    of ``bench put``). Joining them, across every call answered in the same step, keeps the
    order of bytes and costs at most one loop step of latency.
    """

    __slots__ = ("_buf", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._buf: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buf.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(H2Protocol):
    """grpclib's H2Protocol with etcd's stream limit, keeping what shutdown needs."""

    _transport: asyncio.Transport | None = None
    _h2: H2Connection | None = None
    _writer: _CoalescingWriter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Same steps as grpclib's H2Protocol.connection_made, except the local settings: they
        # must be in place before initiate_connection() sends them (a later update only takes
        # effect once the client acknowledges it).
        h2_conn = H2Connection(config=self.h2_config)
        h2_conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: h2_conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        h2_conn.initiate_connection()
        initial = h2_conn.local_settings.initial_window_size
        conn_delta = self.config.http2_connection_window_size - initial
        if conn_delta:
            h2_conn.increment_flow_control_window(conn_delta)
        if self.config.http2_stream_window_size != initial:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._h2 = h2_conn
        self._writer = _CoalescingWriter(self._transport)
        self.connection = Connection(h2_conn, cast(asyncio.Transport, self._writer),
                                     config=self.config)
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)

    def _writable(self) -> asyncio.Transport | None:
        """The raw transport for a direct write, after everything buffered (in h2 and in the
        coalescing writer) went out first, so frames stay whole and in order."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        self.connection.flush()
        self._writer.flush()
        return transport

    def announce_shutdown(self) -> None:
        """GOAWAY(NO_ERROR, last stream 2^31-1): open no new streams, in-flight ones go on.

        Written around h2, which would move the whole connection to CLOSED and refuse to send
        the responses still in flight. grpc-go's GracefulStop sends the same first GOAWAY.
        """
        transport = self._writable()
        if transport is None:
            return
        frame = GoAwayFrame(0, last_stream_id=_MAX_STREAM_ID, error_code=ErrorCodes.NO_ERROR)
        transport.write(frame.serialize())

    def close_connection(self) -> None:
        """The final GOAWAY (through h2, with the real last stream id), then close the socket."""
        transport = self._writable()
        if transport is None or self._h2 is None:
            return
        try:
            self._h2.close_connection(error_code=ErrorCodes.NO_ERROR)
            self.connection.flush()
            self._writer.flush()
        except Exception:  # a connection h2 already considers broken: just close it
            log.debug("GOAWAY failed", exc_info=True)
        transport.close()


class GrpcServer(grpclib.server.Server):
    """One listener's grpclib server (see the module docstring for what differs)."""

    def __init__(self, handlers: Collection[Any], *, codec: EtcdCodec) -> None:
        super().__init__(handlers, codec=codec, config=Configuration())
        self._mapping = FallbackMapping(self._mapping)
        self._h2_config = H2Configuration(
            client_side=False,
            header_encoding="latin-1",
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._protocols: weakref.WeakSet[_Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        # grpclib's factory, with our protocol class and a record of live connections.
        self.__gc_step__()
        handler = grpclib.server.Handler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        protocol = _Protocol(handler, self._config, self._h2_config)
        self._protocols.add(protocol)
        return protocol

    @property
    def sockets(self) -> Sequence[Any]:
        server = cast("asyncio.Server | None", self._server)
        return () if server is None else tuple(server.sockets)

    def stop_accepting(self) -> None:
        """Close the listening sockets only; connections and their calls carry on."""
        if self._server is not None:
            self._server.close()

    def announce_shutdown(self) -> None:
        for protocol in list(self._protocols):
            protocol.announce_shutdown()

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            protocol.close_connection()
