"""What the benchmark measures: endpoints given on the command line, or servers it starts itself.

A started server gets free loopback ports and a temporary data dir, is ready when a real
(linearizable) ``KV/Range`` answers, and is stopped (SIGTERM, then SIGKILL) when the bench ends.
Real etcd is started with the durability it has by default (an fsync per commit, like etcdgw's
``synchronous=FULL`` group commit) and a backend quota large enough for the memory workload.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("etcdgw", "etcd")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
ETCD_QUOTA_BYTES = 8 * 1024**3  # etcd's maximum recommended size; the default (2 GiB) is too small
_SCRUBBED = ("ETCD_", "ETCDCTL_", "ETCDGW_")

#: RangeRequest{key: "bench-probe"}: a linearizable read, hand-encoded (field 1, bytes).
PROBE_RANGE = b"\x0a\x0bbench-probe"


@dataclass(frozen=True)
class Tls:
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cacert is not None or self.cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.cacert),
            private_key=read(self.key),
            certificate_chain=read(self.cert),
        )


@dataclass
class Target:
    """One server under test. ``kind`` is set when the bench started it (then ``pid`` is known)."""

    name: str
    endpoint: str
    tls: Tls = field(default_factory=Tls)
    kind: str | None = None
    workdir: Path | None = None
    argv: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def started(self) -> bool:
        return self.kind is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "started": self.kind,
            "tls": self.tls.enabled,
            "argv": self.argv,
        }

    # -- lifecycle of a started server ---------------------------------------------------------

    def launch(self) -> float:
        """Start the process (data dir kept) and wait until it serves; returns seconds taken."""
        assert self.workdir is not None and self.log_path is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        wait_ready(self)
        return time.monotonic() - t0

    def stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> float:
        self.stop()
        return self.launch()

    def reset(self) -> float:
        """Stop, wipe the data dir, start empty."""
        self.stop()
        assert self.workdir is not None
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
        return self.launch()

    def close(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- process facts -------------------------------------------------------------------------

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process and its children (VmRSS), or None."""
        pid = self.pid
        if pid is None:
            return None
        return sum(_status_kib(p, "VmRSS") for p in _tree(pid)) * 1024

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.pid) if self.pid is not None else None


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, seconds) of ``pid`` and its children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def channel(target: Target) -> grpc.Channel:
    options = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", -1)]
    if target.tls.enabled:
        return grpc.secure_channel(target.endpoint, target.tls.credentials(), options=options)
    return grpc.insecure_channel(target.endpoint, options=options)


def probe(target: Target, timeout: float = 2.0) -> str | None:
    """None when a linearizable Range answers OK, else why not."""
    with channel(target) as ch:
        call = ch.unary_unary("/etcdserverpb.KV/Range")
        try:
            call(PROBE_RANGE, timeout=timeout)
            return None
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


def wait_ready(target: Target, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if target.process is not None and target.process.poll() is not None:
            raise RuntimeError(
                f"{target.name} exited with status {target.process.returncode} before serving\n"
                f"$ {' '.join(target.argv)}\n--- log tail ---\n{target.log_tail()}"
            )
        why = probe(target, timeout=1.0)
        if why is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{target.name} not serving after {timeout:.0f} s ({why})\n"
                f"$ {' '.join(target.argv)}\n--- log tail ---\n{target.log_tail()}"
            )
        time.sleep(0.01)


def start(kind: str, *, etcd_bin: str = "etcd", python: str = sys.executable) -> Target:
    """Start ``kind`` ("etcdgw" or "etcd") on a free loopback port with a temporary data dir."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    last: Exception | None = None
    for _attempt in range(3):  # a free port can be taken before the server binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = str(workdir / "data")
        if kind == "etcd":
            binary = shutil.which(etcd_bin)
            if binary is None:
                raise RuntimeError(f"{etcd_bin} not found (apt-get install etcd-server)")
            peer = f"http://127.0.0.1:{free_port()}"
            argv = [
                binary,
                "--name",
                "bench",
                "--data-dir",
                data,
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"bench={peer}",
                "--initial-cluster-state",
                "new",
                "--quota-backend-bytes",
                str(ETCD_QUOTA_BYTES),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ]
        elif kind == "etcdgw":
            argv = [
                python,
                "-m",
                "etcdgw",
                "serve",
                "--name",
                "bench",
                "--data-dir",
                data,
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--log-level",
                "warn",
            ]
        else:
            raise ValueError(f"--start: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
        target = Target(
            name=kind,
            endpoint=f"127.0.0.1:{port}",
            kind=kind,
            workdir=workdir,
            argv=argv,
            log_path=workdir / f"{kind}.log",
        )
        try:
            target.launch()
            return target
        except RuntimeError as exc:
            target.stop()
            shutil.rmtree(workdir / "data", ignore_errors=True)
            last = exc
            if "address already in use" not in target.log_tail().lower():
                break
    shutil.rmtree(workdir, ignore_errors=True)
    assert last is not None
    raise last


def parse_endpoint(spec: str, tls: Tls) -> Target:
    """``NAME=host:port`` (a bare ``host:port`` is named after itself)."""
    name, sep, endpoint = spec.partition("=")
    if not sep:
        name, endpoint = spec, spec
    for prefix in ("http://", "https://"):
        endpoint = endpoint.removeprefix(prefix)
    if ":" not in endpoint:
        raise ValueError(f"--endpoint {spec!r}: expected NAME=host:port")
    return Target(name=name, endpoint=endpoint, tls=tls)
