"""A client for the fault injection inside the Cosmos test server (tests/cosmos_server/).

The server takes rules over HTTP when started with ``--faults`` (``start_local_cosmos(
faults=True)``), so it reaches Cosmos clients in other processes (etcdgw gateways), which an
in-process fault transport (support/cosmos_faults.py) cannot. The rules and their semantics are
described in the FAULTS section of cosmos-test-server.js; in short::

    faults = ServerFaults(server.url)
    rule = faults.arm("batch", "status", status=429, retry_after_ms=50, count=-1)
    ...
    faults.fired(rule)      # how many requests it applied to
    faults.disarm(rule)     # or faults.clear() for every rule

``match``: batch, feed, query, meta-read, read, write, any (document requests only: the account,
database, collection and pkranges requests never match, so a client can always open).
``action``: status (answered with that status, not executed), lose (executed, then the connection
is destroyed instead of answering), delay (executed after ``delay_ms``), hang (never executed nor
answered).

Standard library only, synchronous, one short HTTPS connection per call (so it is thread-safe:
from async tests call it through :func:`asyncio.to_thread`, or use the ``a*`` variants, which do
exactly that). The test server's certificate is self-signed: verification is off, as
``settings_for`` does for the Cosmos clients (loopback only).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FaultsError", "ServerFaults"]

MATCHES = ("batch", "feed", "query", "meta-read", "read", "write", "any")
ACTIONS = ("status", "lose", "delay", "hang")


class FaultsError(RuntimeError):
    """The control endpoint refused a call (a bad rule; a server started without --faults)."""


class ServerFaults:
    """The ``/_faults`` endpoint of one Cosmos test server (``endpoint_url``: its https URL)."""

    def __init__(self, endpoint_url: str, *, timeout: float = 5.0) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https URL of the Cosmos test server: {endpoint_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.timeout = timeout
        self._ssl = ssl.create_default_context()
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE

    def __repr__(self) -> str:
        return f"ServerFaults(https://{self.host}:{self.port}/)"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=self._ssl)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            conn.close()
        if response.status != 200:
            raise FaultsError(f"{method} {path}: {response.status} {text.strip()} (was the server "
                              "started with --faults?)")
        return json.loads(text)

    # -- the API --------------------------------------------------------------------------

    def arm(self, match: str, action: str, *, status: int = 0, retry_after_ms: int = 0,
            count: int = 1, probability: float = 1.0, delay_ms: int = 0, substatus: int = 0,
            db: str | None = None) -> str:
        """Arm a rule; its id. ``count``: requests it applies to (-1: until cleared);
        ``db``: only requests on that database."""
        if match not in MATCHES:
            raise ValueError(f"match must be one of {MATCHES}, not {match!r}")
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        rule: dict[str, Any] = {"match": match, "action": action, "count": count,
                                "probability": probability}
        for name, value in (("status", status), ("retryAfterMs", retry_after_ms),
                            ("delayMs", delay_ms), ("substatus", substatus)):
            if value:
                rule[name] = value
        if db is not None:
            rule["db"] = db
        return str(self._call("POST", "/_faults", rule)["id"])

    def disarm(self, rule_id: str) -> None:
        """Remove one rule."""
        self._call("DELETE", f"/_faults/{rule_id}")

    def clear(self) -> int:
        """Remove every rule; how many there were."""
        return int(self._call("DELETE", "/_faults")["cleared"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule armed and not cleared (exhausted ones too), each with ``fired``."""
        return list(self._call("GET", "/_faults")["rules"])

    def fired(self, rule_id: str) -> int:
        """How many requests the rule applied to."""
        for rule in self.rules():
            if rule["id"] == rule_id:
                return int(rule["fired"])
        raise KeyError(rule_id)

    def seen(self) -> dict[str, int]:
        """Document requests the server received so far, per kind (batch, feed, ...)."""
        return {k: int(v) for k, v in self._call("GET", "/_faults")["seen"].items()}

    # -- the same from async code (in a thread: never blocks the loop) --------------------

    async def aarm(self, match: str, action: str, **kwargs: Any) -> str:
        return await asyncio.to_thread(self.arm, match, action, **kwargs)

    async def adisarm(self, rule_id: str) -> None:
        await asyncio.to_thread(self.disarm, rule_id)

    async def aclear(self) -> int:
        return await asyncio.to_thread(self.clear)

    async def arules(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.rules)

    async def afired(self, rule_id: str) -> int:
        return await asyncio.to_thread(self.fired, rule_id)

    async def aseen(self) -> dict[str, int]:
        return await asyncio.to_thread(self.seen)
