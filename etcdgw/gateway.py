"""The gateway: backend, store and gRPC listeners, opened and closed in the right order.

Embedding (inside any running asyncio loop; uvloop is only the CLI's choice)::

    async with Gateway(Config(listen_client_urls=("http://127.0.0.1:0",))) as gw:
        print(gw.url)              # http://127.0.0.1:40417 - port 0 resolved
        await gw.serve_forever()   # until gw.close() is called elsewhere

Shutdown order matters for durability and for clients: stop accepting connections, tell connected
clients (GOAWAY) to start no new calls, let unary calls in flight finish (up to ``grace``
seconds), cancel what is left (watch and keepalive streams), close connections, and only then
close the store and the backend, which flush, so no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from etcdgw.alarms import Alarms
from etcdgw.backends import open_backend
from etcdgw.compactor import AutoCompactor
from etcdgw.config import Config, ConfigError, Endpoint
from etcdgw.lease.manager import LeaseManager
from etcdgw.metrics import Metrics
from etcdgw.server.app import GrpcServer, build_services, server_ssl_context
from etcdgw.server.boundary import Boundary
from etcdgw.server.codec import EtcdCodec
from etcdgw.server.http import HttpApi, HttpListener, MuxServer, start_http_listener
from etcdgw.store import Store
from etcdgw.version import ETCD_VERSION, __version__
from etcdgw.watch.hub import WatchHub

__all__ = ["DEFAULT_GRACE", "Gateway"]

log = logging.getLogger(__name__)

#: On a shared log, each gateway writes its member document this often; one silent for
#: MEMBER_LIVENESS seconds drops out of MemberList (a crashed gateway does not linger).
HEARTBEAT_INTERVAL = 5.0
MEMBER_LIVENESS = 20.0

#: How long close() lets unary calls in flight finish: etcd's request timeout (N02).
DEFAULT_GRACE: Final = 7.0


@dataclass(frozen=True)
class _Listener:
    endpoint: Endpoint  # as configured (port may be 0)
    bound: Endpoint  # with the actual port
    server: GrpcServer


class Gateway:
    """One etcdgw instance; see the module docstring. Not reusable after close()."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._backend: Any = None
        self._store: Store | None = None
        self._hub: WatchHub | None = None
        self._leases: LeaseManager | None = None
        self._boundary: Boundary | None = None
        self._alarms: Alarms | None = None
        self._http: HttpApi | None = None
        self._compactor: AutoCompactor | None = None
        self.metrics = Metrics()
        self._listeners: list[_Listener] = []
        self._metrics_listeners: list[HttpListener] = []
        self._started = False
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the backend and the store, then listen on every configured URL."""
        if self._started:
            raise RuntimeError("Gateway already started")
        self._started = True
        config = self.config
        try:
            ssl_context = self._ssl_context()
            self._backend = await open_backend(
                config.backend,
                config.data_dir,
                cosmos=config.cosmos_settings if config.backend == "cosmos" else None,
            )
            self._store = await Store.open(
                self._backend, max_txn_ops=config.max_txn_ops, member_name=config.name
            )
            self._boundary = Boundary(
                codec=EtcdCodec(),
                max_request_bytes=config.max_request_bytes,
                max_message_bytes=config.max_message_bytes,
                metrics=self.metrics,
            )
            self._store.commit_listeners.append(self.metrics.on_commit)
            self._alarms = Alarms(self._store.member_id, config.quota_bytes, self._backend.size)
            self._hub = WatchHub(
                self._store.replica,
                self._store.header,
                fragment_limit=config.max_message_bytes,
                progress_interval=config.watch_progress_notify_interval,
            )
            self._store.listeners.append(self._hub.on_apply)
            self._store.compaction_listeners.append(self._hub.on_compact)
            self._store.reload_listeners.append(self._hub.on_reload)
            shared_leases: Any = (
                self._backend if hasattr(self._backend, "claim_lease_owner") else None
            )
            self._leases = LeaseManager(self._store, shared=shared_leases)
            services = build_services(
                self._store,
                self._boundary,
                config,
                self._client_urls,
                self._backend.size,
                self._hub,
                self._leases,
                alarms=self._alarms,
                backend=self._backend,
                peers=self._peers if hasattr(self._backend, "members") else None,
            )
            self._http = HttpApi(self._store, self._alarms, self.metrics)
            self._register_gauges()
            for endpoint in config.listen_endpoints:
                await self._listen(endpoint, services, ssl_context)
            for endpoint in config.metrics_endpoints:
                self._metrics_listeners.append(
                    await start_http_listener(self._http, endpoint.host, endpoint.port)
                )
            if config.auto_compaction is not None:
                mode, retention = config.auto_compaction
                self._compactor = AutoCompactor(self._store, mode, retention)
                self._compactor.start()
            self._leases.start()
            if hasattr(self._backend, "heartbeat"):
                await self._heartbeat_once()
                self._heartbeat = asyncio.create_task(
                    self._heartbeats(), name="etcdgw-member-heartbeat"
                )
        except BaseException:
            await self._shutdown(grace=0)
            raise
        log.info(
            "etcdgw %s (etcd API %s) serving member %r on %s, advertising %s; backend %s in %s",
            __version__,
            ETCD_VERSION,
            config.name,
            ", ".join(self.urls),
            ", ".join(self.client_urls),
            config.backend,
            config.data_dir,
        )

    async def serve_forever(self) -> None:
        """Wait until the gateway is closed (by close(), from another task)."""
        if not self._started:
            raise RuntimeError("Gateway not started")
        await self._closed.wait()

    async def close(self, grace: float = DEFAULT_GRACE) -> None:
        """Drain and close everything; safe to call more than once and from several tasks."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown(grace))
        # shield: a caller cancelled while waiting must not abort the shutdown half way.
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- where it listens ------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the first listener, with the port actually bound."""
        bound = self._first().bound
        return bound.host, bound.port

    @property
    def url(self) -> str:
        """The first listener's URL, e.g. ``http://127.0.0.1:40417``."""
        return self._first().bound.url

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(listener.bound.url for listener in self._listeners)

    @property
    def client_urls(self) -> tuple[str, ...]:
        """The advertised URLs (MemberList ``clientURLs``), port 0 replaced by the bound port."""
        return self._client_urls()

    @property
    def metrics_urls(self) -> tuple[str, ...]:
        """The ``--listen-metrics-urls`` listeners, with the ports actually bound."""
        return tuple(
            f"http://{endpoint.host}:{listener.port}"
            for endpoint, listener in zip(
                self.config.metrics_endpoints, self._metrics_listeners, strict=False
            )
        )

    @property
    def alarms(self) -> Alarms:
        """The alarm table and space quota (services check it before writes)."""
        if self._alarms is None:
            raise RuntimeError("Gateway not started")
        return self._alarms

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("Gateway not started")
        return self._store

    # -- internals ---------------------------------------------------------------------------

    def _register_gauges(self) -> None:
        store, alarms, hub, backend = self._store, self._alarms, self._hub, self._backend
        assert store is not None and alarms is not None and hub is not None
        gauge = self.metrics.gauge
        gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is "
              "not.", lambda: 1)
        gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 "
              "otherwise.", lambda: 1)
        gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database "
              "physically allocated in bytes.", lambda: backend.size()[0])
        gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database "
              "logically in use in bytes.", lambda: backend.size()[1])
        gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
              lambda: alarms.quota_bytes)
        gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.",
              lambda: store.revision)
        gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in "
              "store.", lambda: store.compact_revision)
        gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", lambda: len(store.replica))
        gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.",
              lambda: hub.watcher_count)
        gauge("etcdgw_alarms_active", "Active alarms (NOSPACE, CORRUPT).",
              lambda: len(alarms.list()))
        follower = store.follower
        if follower is not None:
            self.metrics.counter(
                "etcdgw_store_reloads_total", "Times this gateway lost its tail of the shared "
                "log and reloaded its replica from the backend.", lambda: follower.reloads)
            self.metrics.counter(
                "etcdgw_store_reload_failures_total", "Reload attempts that failed (each is "
                "tried again after a backoff).", lambda: follower.reload_failures)
        leases = self._leases
        if leases is not None:
            gauge("etcdgw_leases", "Live leases.", lambda: len(leases.live()))

    def _first(self) -> _Listener:
        if not self._listeners:
            raise RuntimeError("Gateway not started")
        return self._listeners[0]

    # -- membership on a shared log (each gateway a member; MemberList shows the live ones) --

    async def _heartbeat_once(self) -> None:
        backend: Any = self._backend
        await backend.heartbeat(self.store.member_id, self.config.name, self.client_urls)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._heartbeat_once()
            except Exception as e:  # the log is unreachable: MemberList shows us anyway
                log.warning("member heartbeat failed: %s", e)

    async def _peers(self) -> list[tuple[int, str, list[str]]]:
        """Gateways on the same log that sent a heartbeat lately, by member id."""
        backend: Any = self._backend
        try:
            docs = await backend.members()
        except Exception as e:
            log.warning("reading members failed: %s", e)
            return []
        live_after = time.time() - MEMBER_LIVENESS
        return sorted(
            (int(d["member_id"]), str(d["name"]), list(d["client_urls"]))
            for d in docs
            if float(d.get("heartbeat", 0)) >= live_after
        )

    def _client_urls(self) -> tuple[str, ...]:
        urls = []
        for endpoint in self.config.advertise_endpoints:
            if endpoint.port == 0:
                endpoint = self._resolve_port(endpoint)
            urls.append(endpoint.url)
        return tuple(urls)

    def _resolve_port(self, advertised: Endpoint) -> Endpoint:
        # Prefer the listener configured with the same scheme and host, then any of the scheme.
        for same_host in (True, False):
            for listener in self._listeners:
                configured = listener.endpoint
                if configured.scheme == advertised.scheme and (
                    not same_host or configured.host == advertised.host
                ):
                    return advertised.with_port(listener.bound.port)
        return advertised

    def _ssl_context(self) -> ssl.SSLContext | None:
        config = self.config
        if not any(endpoint.tls for endpoint in config.listen_endpoints):
            return None
        try:
            return server_ssl_context(config)
        except (OSError, ssl.SSLError) as exc:
            # Name the files: "[SSL] PEM lib" alone does not tell an operator what to fix.
            raise ConfigError(
                f"cannot load TLS files (--cert-file {config.cert_file}, --key-file "
                f"{config.key_file}, --trusted-ca-file {config.trusted_ca_file}): {exc}"
            ) from exc

    async def _listen(
        self, endpoint: Endpoint, services: list[Any], ssl_context: ssl.SSLContext | None
    ) -> None:
        assert self._boundary is not None
        server = MuxServer(services, codec=EtcdCodec(), http=self._http)
        await server.start(
            endpoint.host,
            endpoint.port,
            ssl=ssl_context if endpoint.tls else None,
            reuse_address=True,
        )
        # Port 0: report the port of the first socket (a host name resolving to several
        # addresses would get one port per address; use an IP literal with port 0).
        port = server.sockets[0].getsockname()[1] if endpoint.port == 0 else endpoint.port
        self._listeners.append(_Listener(endpoint, endpoint.with_port(port), server))

    async def _shutdown(self, grace: float) -> None:
        servers = [listener.server for listener in self._listeners]
        try:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            if self._compactor is not None:
                await self._compactor.close()
            for metrics_listener in self._metrics_listeners:
                await metrics_listener.close()
            for server in servers:
                server.stop_accepting()
                server.announce_shutdown()
            if self._boundary is not None and self._boundary.inflight:
                try:
                    await asyncio.wait_for(self._boundary.wait_idle(), grace)
                except TimeoutError:
                    log.warning(
                        "%d calls still running %.1f s after shutdown began; cancelling them",
                        self._boundary.inflight,
                        grace,
                    )
            for server in servers:
                server.close()  # cancels what is left: watch and keepalive streams
            for server in servers:
                await server.wait_closed()
                server.close_connections()
        finally:
            try:
                if self._leases is not None:
                    await self._leases.close()
                if self._hub is not None:
                    await self._hub.close()
                if self._store is not None:
                    await self._store.close()
            finally:
                if self._backend is not None:
                    await self._backend.close()
                self._closed.set()
                if self._listeners:
                    log.info("etcdgw stopped")
