"""The Cosmos DB protocol server for the Cosmos backend's tests (tests/cosmos_server/).

``cosmos_endpoint`` (session fixture) starts ``node tests/cosmos_server/cosmos-test-server.js
--port 0 --host 127.0.0.1``, waits for its "Ready to accept HTTPS connections at HOST:PORT" line
(deadline :data:`START_TIMEOUT`), yields ``https://127.0.0.1:PORT/`` and stops it at the end
(SIGTERM, then SIGKILL after 5 s). With ``COSMOS_TEST_ENDPOINT`` (and ``COSMOS_TEST_KEY``) set,
the tests target that account instead (the official emulator or a real account).

Without Node or the npm package: a failure in CI (``.ci/run`` installs both), a skip elsewhere.
``cosmos_settings`` (function fixture) gives each test its own database and container
(``uuid4().hex[:8]``) and deletes the database afterwards.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .cosmos_server_faults import ServerFaults

SERVER_DIR = Path(__file__).resolve().parents[1] / "cosmos_server"
LAUNCHER = SERVER_DIR / "cosmos-test-server.js"
PACKAGE = SERVER_DIR / "node_modules" / "@vercel" / "cosmosdb-server" / "package.json"
START_TIMEOUT = 15.0
READY = "Ready to accept HTTPS connections at "
#: Any base64 string is accepted by the local server (it checks no signature).
LOCAL_KEY = "dGVzdC1rZXktbm90LWEtc2VjcmV0"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason} (.ci/run should have installed it)", pytrace=False)
    pytest.skip(reason)


class LocalCosmos:
    """A running cosmos-test-server.js process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, lines: list[str],
                 faults_on: bool = False) -> None:
        self.proc = proc
        self.url = url
        self.lines = lines  # its output so far (for failure reports)
        self.faults_on = faults_on

    @property
    def faults(self) -> ServerFaults:
        """Its fault injection (support.cosmos_server_faults.ServerFaults); needs faults=True."""
        from .cosmos_server_faults import ServerFaults

        if not self.faults_on:
            raise RuntimeError("this Cosmos test server was started without faults=True")
        return ServerFaults(self.url)

    def pause(self) -> None:
        """An outage: SIGSTOP. The kernel still accepts connections; nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it answers what queued up meanwhile."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_local_cosmos(*, log_requests: bool = False, faults: bool = False) -> LocalCosmos:
    """A server of its own (the session's is ``cosmos_endpoint``). ``log_requests``: it prints
    ``REQ <kind> <method> <path>`` per request into ``lines`` (kind: batch, feed, query or
    plain), for counting what a gateway costs. ``faults``: its fault injection is on (``--faults``;
    armed through ``.faults``, see support/cosmos_server_faults.py)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH (the Cosmos test server needs Node.js 20)")
    if not PACKAGE.exists():
        _unavailable(f"the npm package is not installed: run `npm ci` in {SERVER_DIR}")
    proc = subprocess.Popen(
        [str(node), str(LAUNCHER), "--port", "0", "--host", "127.0.0.1",
         *(["--faults"] if faults else [])],
        cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COSMOS_TEST_LOG_REQUESTS": "1"} if log_requests else None,
    )
    lines: list[str] = []
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps reading so the server never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, name="cosmos-test-server-output", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        try:
            line = q.get(timeout=max(left, 0.01))
        except queue.Empty:
            line = ""
        if line is None or left <= 0:
            proc.kill()
            proc.wait(5)
            output = "\n".join(lines[-20:])
            raise RuntimeError(f"the Cosmos test server did not start:\n{output}")
        if line.startswith(READY):
            host_port = line[len(READY):].strip()
            faults_on = faults or os.environ.get("COSMOS_TEST_FAULTS") == "1"
            return LocalCosmos(proc, f"https://{host_port}/", lines, faults_on)


def cosmos_endpoint_fixture() -> Iterator[str]:
    external = os.environ.get("COSMOS_TEST_ENDPOINT")
    if external:
        yield external
        return
    server = start_local_cosmos()
    try:
        yield server.url
    finally:
        server.stop()


cosmos_endpoint = pytest.fixture(scope="session", name="cosmos_endpoint")(cosmos_endpoint_fixture)


def settings_for(endpoint: str, **overrides: Any) -> Any:
    """CosmosSettings with a fresh database and container for one test."""
    from etcdgw.backends.cosmos import CosmosSettings

    local = not os.environ.get("COSMOS_TEST_ENDPOINT")
    values: dict[str, Any] = {
        "endpoint": endpoint,
        "key": LOCAL_KEY if local else os.environ.get("COSMOS_TEST_KEY", ""),
        "database": "t" + uuid.uuid4().hex[:8],
        "container": "c" + uuid.uuid4().hex[:8],
        "connection_verify": not local,
        "poll_interval": 0.02,
        "request_timeout": 5.0,
    }
    values.update(overrides)
    return CosmosSettings(**values)


async def drop_database(settings: Any) -> None:
    """Delete the test's database (best effort: a real account must not fill up)."""
    from azure.cosmos.aio import CosmosClient

    try:
        async with CosmosClient(settings.endpoint, credential=settings.key,
                                connection_verify=settings.connection_verify) as client:
            await client.delete_database(settings.database)
    except Exception:
        pass


def cosmos_settings_fixture(cosmos_endpoint: str) -> Iterator[Any]:
    settings = settings_for(cosmos_endpoint)
    yield settings
    # A sync fixture (usable from other fixtures whatever their kind): the cleanup gets a loop
    # of its own, in a thread so that it never meets the test's loop.
    t = threading.Thread(target=lambda: asyncio.run(drop_database(settings)))
    t.start()
    t.join(30)


cosmos_settings = pytest.fixture(name="cosmos_settings")(cosmos_settings_fixture)


# ---------------------------------------------------------------------------------------------
# etcdgw processes on the Cosmos backend (`etcdgw serve --backend cosmos`)


def account_key() -> str:
    """The key the gateways get: any base64 string for the local server (it checks none)."""
    if os.environ.get("COSMOS_TEST_ENDPOINT"):
        return os.environ.get("COSMOS_TEST_KEY", "")
    return LOCAL_KEY


def gateway_args(endpoint: str, database: str, container: str = "etcd") -> tuple[str, ...]:
    """The ``serve`` flags that put a gateway on ``database``/``container``."""
    return ("--backend", "cosmos", "--cosmos-endpoint", endpoint, "--cosmos-key", account_key(),
            "--cosmos-database", database, "--cosmos-container", container)


def new_database() -> str:
    return "g" + uuid.uuid4().hex[:8]


def drop_database_now(endpoint: str, database: str) -> None:
    """drop_database from sync code (a loop of its own, in a thread: never the test's loop)."""
    settings = settings_for(endpoint, database=database)
    t = threading.Thread(target=lambda: asyncio.run(drop_database(settings)))
    t.start()
    t.join(30)


def etcdgw_cosmos_server_fixture(server_factory: Any, cosmos_endpoint: str) -> Iterator[Any]:
    database = new_database()
    server = server_factory("etcdgw", extra_args=gateway_args(cosmos_endpoint, database))
    yield server
    server.stop()  # before the database goes (server_factory's own stop is then a no-op)
    drop_database_now(cosmos_endpoint, database)


#: ``etcdgw serve --backend cosmos`` over h2c on a database of its own, one per test module
#: (registered in tests/conftest.py).
etcdgw_cosmos_server = pytest.fixture(scope="module", name="etcdgw_cosmos_server")(
    etcdgw_cosmos_server_fixture)

#: ``target`` plus the Cosmos-backed gateway.
TARGETS_WITH_COSMOS = ("etcd", "etcdgw", "etcdgw-cosmos")


@pytest.fixture(scope="module", params=TARGETS_WITH_COSMOS)
def target_with_cosmos(request: pytest.FixtureRequest) -> Any:
    """conftest's ``target`` over "etcd", "etcdgw" and "etcdgw-cosmos". A module opts in by
    binding it to the name ``target`` (``target = target_with_cosmos``), which overrides
    conftest's fixture for that module only. The Cosmos gateway's ``Server.kind`` is "etcdgw":
    tests that branch on the kind hold it to etcdgw's contract."""
    return request.getfixturevalue(request.param.replace("-", "_") + "_server")
