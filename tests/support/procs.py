"""Start and stop real servers (Debian's etcd, our etcdgw) on loopback ports.

Readiness is decided by a real gRPC call (a serializable ``KV/Range``), polled with a deadline;
nothing waits a fixed time hoping the server is up. Each server writes its log to a file in its
temporary directory; the tail of that file goes into every error raised here and, through the hook
in tests/conftest.py, into the report of a failing test.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .certs import TlsFiles

Kind = Literal["etcd", "etcdgw"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Environment variables never passed on to servers or etcdctl: etcd and etcdctl read their flags
#: from ETCD_* / ETCDCTL_*, and tests/conftest.py sets the protobuf one for the etcd3 client only.
_SCRUBBED_PREFIXES = ("ETCD_", "ETCDCTL_")
_SCRUBBED_NAMES = ("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION",)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES
    }
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# ports

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and has not been handed out before.

    The kernel may still give the port to someone else before the server binds it; start_*()
    retries with fresh ports when a server reports "address already in use".
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


# ---------------------------------------------------------------------------------------------
# the server handle


class ServerStartError(RuntimeError):
    pass


@dataclass
class Server:
    """One running server process.

    ``endpoint`` is ``127.0.0.1:PORT`` (what gRPC clients dial); ``client_url`` carries the scheme
    (``http://`` for h2c, ``https://`` under TLS), which is what etcdctl's ``--endpoints`` gets.
    """

    kind: Kind
    name: str
    endpoint: str
    client_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    tls: TlsFiles | None = None
    client_cert_auth: bool = False
    argv: tuple[str, ...] = ()
    stopped: bool = field(default=False, repr=False)
    # How it was started, so that respawn() can start it again exactly so.
    cwd: Path | None = field(default=None, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def mode(self) -> str:
        """``h2c``, ``tls`` or ``mtls``."""
        if self.tls is None:
            return "h2c"
        return "mtls" if self.client_cert_auth else "tls"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        return (
            f"{self.kind} ({self.mode}) at {self.client_url}, pid {self.process.pid}, "
            f"log {self.log_path}\n$ {' '.join(self.argv)}"
        )

    def stop(self, *, expect_clean_exit: bool | None = None) -> int | None:
        """SIGTERM the server and wait for it.

        etcdgw must exit with status 0 within STOP_TIMEOUT (a graceful shutdown is part of its
        contract); etcd gets the same signal and is killed if it lingers. Returns the exit status.
        """
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        _live.discard(self)
        if expect_clean_exit is None:
            expect_clean_exit = self.kind == "etcdgw"
        proc = self.process
        already_dead = proc.poll() is not None
        if not already_dead:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            if expect_clean_exit:
                raise AssertionError(
                    f"{self.describe()}\ndid not exit within {STOP_TIMEOUT:.0f} s of SIGTERM\n"
                    f"--- log tail ---\n{self.log_tail()}"
                ) from None
            return proc.returncode
        if expect_clean_exit and (already_dead or rc != 0):
            why = "had already exited" if already_dead else "exited"
            raise AssertionError(
                f"{self.describe()}\n{why} with status {rc} (expected 0 after SIGTERM)\n"
                f"--- log tail ---\n{self.log_tail()}"
            )
        return rc

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


#: Servers started and not yet stopped; the conftest failure hook shows their logs.
_live: set[Server] = set()


def live_servers() -> list[Server]:
    return list(_live)


# ---------------------------------------------------------------------------------------------
# readiness: a real gRPC call


def grpc_channel(server: Server, *, client_cert: bool | None = None):  # type: ignore[no-untyped-def]
    """A grpcio channel to ``server`` (TLS and client certificate as the server needs them)."""
    import grpc

    options = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]
    if server.tls is None:
        return grpc.insecure_channel(server.endpoint, options=options)
    if client_cert is None:
        client_cert = server.client_cert_auth
    creds = grpc.ssl_channel_credentials(
        root_certificates=server.tls.ca.read_bytes(),
        private_key=server.tls.client_key.read_bytes() if client_cert else None,
        certificate_chain=server.tls.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(server.endpoint, creds, options=options)


# etcdserverpb.RangeRequest{key: "health", serializable: true}, hand-encoded so that readiness
# needs no generated code: field 1 (key, bytes) and field 10 (serializable, bool).
_RANGE_HEALTH = b"\x0a\x06health" + b"\x50\x01"


def _probe(server: Server) -> str | None:
    """None if the server answered the Range call over gRPC, else why not."""
    import grpc

    try:
        with socket.create_connection((server.host, server.port), timeout=1.0):
            pass
    except OSError as exc:
        return f"tcp: {exc}"
    channel = grpc_channel(server)
    try:
        call = channel.unary_unary(
            "/etcdserverpb.KV/Range",
            request_serializer=None,
            response_deserializer=None,
        )
        call(_RANGE_HEALTH, timeout=2.0)
        return None
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"grpc: {code.name} {exc.details()}"
        # Any other status is a real answer from a gRPC server: it is up. (A gateway still missing
        # the RPC answers UNIMPLEMENTED; the tests then fail on their own, with a clearer message.)
        return None
    finally:
        channel.close()


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "not probed"
    while True:
        rc = server.process.poll()
        if rc is not None:
            raise ServerStartError(
                f"{server.describe()}\nexited with status {rc} before becoming ready\n"
                f"--- log tail ---\n{server.log_tail()}"
            )
        last = _probe(server) or ""
        if not last:
            return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{server.describe()}\nnot ready after {timeout:.0f} s (last probe: {last})\n"
                f"--- log tail ---\n{server.log_tail()}"
            )
        time.sleep(0.05)  # poll interval, not synchronisation: the loop checks a condition


# ---------------------------------------------------------------------------------------------
# starting


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def _launch(
    kind: Kind,
    argv_for: Callable[[str, Path], list[str]],
    workdir: Path,
    *,
    tls: TlsFiles | None,
    client_cert_auth: bool,
    name: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    scheme = "https" if tls is not None else "http"
    for attempt in range(1, attempts + 1):
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        url = f"{scheme}://{endpoint}"
        data_dir = workdir / f"data-{attempt}"
        log_path = workdir / f"{kind}-{attempt}.log"
        argv = argv_for(url, data_dir)
        log = open(log_path, "wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env if env is not None else clean_env(),
                start_new_session=True,  # Ctrl-C reaches pytest only; teardown stops servers
            )
        finally:
            log.close()
        server = Server(
            kind=kind,
            name=name,
            endpoint=endpoint,
            client_url=url,
            data_dir=data_dir,
            log_path=log_path,
            process=proc,
            tls=tls,
            client_cert_auth=client_cert_auth,
            argv=tuple(argv),
            cwd=cwd,
            env=env,
        )
        _live.add(server)
        try:
            wait_ready(server)
            return server
        except ServerStartError:
            if server.process.poll() is None:
                server.stop(expect_clean_exit=False)
            else:
                server.stopped = True
                _live.discard(server)
            if attempt < attempts and "address already in use" in server.log_tail().lower():
                continue
            raise
    raise AssertionError("unreachable")


def respawn(server: Server) -> Server:
    """Start a server that died (SIGKILL) again: same command line, so the same port and data
    directory; its log goes on in the same file. Returns the new handle."""
    if server.process.poll() is None:
        raise ValueError(f"{server.describe()} is still running")
    server.stopped = True
    _live.discard(server)
    with open(server.log_path, "ab") as log:
        log.write(b"\n--- respawned ---\n")
        log.flush()
        proc = subprocess.Popen(
            list(server.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=server.cwd, env=server.env if server.env is not None else clean_env(),
            start_new_session=True,
        )
    again = dataclasses.replace(server, process=proc, stopped=False)
    _live.add(again)
    try:
        wait_ready(again)
    except ServerStartError:
        again.stop(expect_clean_exit=False)
        raise
    return again


def _tls_flags(tls: TlsFiles | None, client_cert_auth: bool) -> list[str]:
    if tls is None:
        return []
    flags = ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key)]
    if client_cert_auth:
        flags += ["--trusted-ca-file", str(tls.ca), "--client-cert-auth"]
    return flags


def start_etcd(
    workdir: Path,
    *,
    tls: TlsFiles | None = None,
    client_cert_auth: bool = False,
    name: str = "t",
    extra_args: Sequence[str] = (),
) -> Server:
    """Start Debian's etcd as a one-member cluster on loopback ports."""
    binary = etcd_binary()
    if binary is None:
        raise ServerStartError("etcd binary not found on PATH (apt-get install etcd-server)")
    if client_cert_auth and tls is None:
        raise ValueError("client_cert_auth needs tls")

    def argv_for(url: str, data_dir: Path) -> list[str]:
        peer = f"http://127.0.0.1:{free_port()}"
        return [
            binary,
            "--name", name,
            "--data-dir", str(data_dir),
            "--listen-client-urls", url,
            "--advertise-client-urls", url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *_tls_flags(tls, client_cert_auth),
            *extra_args,
        ]  # fmt: skip

    return _launch("etcd", argv_for, workdir, tls=tls, client_cert_auth=client_cert_auth, name=name)


def start_etcdgw(
    workdir: Path,
    *,
    tls: TlsFiles | None = None,
    client_cert_auth: bool = False,
    name: str = "t",
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> Server:
    """Start ``python -m etcdgw serve`` from this checkout, as a user would."""
    if client_cert_auth and tls is None:
        raise ValueError("client_cert_auth needs tls")

    def argv_for(url: str, data_dir: Path) -> list[str]:
        return [
            python, "-m", "etcdgw", "serve",
            "--name", name,
            "--listen-client-urls", url,
            "--advertise-client-urls", url,
            "--data-dir", str(data_dir),
            "--log-level", "info",
            *_tls_flags(tls, client_cert_auth),
            *extra_args,
        ]  # fmt: skip

    # Run from the repository root so `-m etcdgw` finds this checkout even when not installed.
    env = clean_env(PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return _launch(
        "etcdgw",
        argv_for,
        workdir,
        tls=tls,
        client_cert_auth=client_cert_auth,
        name=name,
        cwd=REPO_ROOT,
        env=env,
    )


def start_server(
    kind: Kind,
    workdir: Path,
    *,
    tls: TlsFiles | None = None,
    client_cert_auth: bool = False,
    extra_args: Sequence[str] = (),
) -> Server:
    starter = {"etcd": start_etcd, "etcdgw": start_etcdgw}[kind]
    return starter(workdir, tls=tls, client_cert_auth=client_cert_auth, extra_args=extra_args)
