"""Settings of the Cosmos DB backend; no azure import here (the embedded path never loads it).

The account key is a secret: it never appears in ``repr``, logs or error texts. Every message
that may carry text from the SDK goes through :func:`CosmosSettings.scrub` first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "CONSISTENCY_LEVELS",
    "DEFAULT_CONTAINER",
    "DEFAULT_DATABASE",
    "CosmosSettings",
    "parse_connection_string",
]

DEFAULT_DATABASE: Final = "EtcdDB"
DEFAULT_CONTAINER: Final = "EtcdData"
#: The account's consistency levels; the backend only relies on Strong/BoundedStaleness/Session
#: within one region because every document it reads lives in one logical partition and every
#: commit is conditional on the meta document (a stale read of meta ends in a 412, not in a lost
#: write). "" = the account's default.
CONSISTENCY_LEVELS: Final = ("", "Strong", "BoundedStaleness", "Session", "ConsistentPrefix",
                             "Eventual")


def parse_connection_string(text: str) -> tuple[str, str]:
    """``AccountEndpoint=https://...;AccountKey=...;`` -> (endpoint, key).

    The error never quotes the text: it holds the key."""
    parts: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError("connection string: expected Name=Value parts separated by ';'")
        parts[name.strip().lower()] = value.strip()
    endpoint, key = parts.get("accountendpoint", ""), parts.get("accountkey", "")
    if not endpoint or not key:
        raise ValueError("connection string: AccountEndpoint and AccountKey are both required")
    return endpoint, key


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CosmosSettings:
    endpoint: str = ""
    key: str = field(default="", repr=False)
    #: Alternative to endpoint + key: ``AccountEndpoint=...;AccountKey=...;``.
    connection_string: str = field(default="", repr=False)
    database: str = DEFAULT_DATABASE
    container: str = DEFAULT_CONTAINER
    #: Provisioned RU/s for a container created on first start (None: the account's default,
    #: e.g. serverless).
    throughput: int | None = None
    consistency: str = ""
    preferred_regions: tuple[str, ...] = ()
    #: TLS verification of the endpoint. Only loopback endpoints (the local test server, whose
    #: certificate is self-signed) may turn it off.
    connection_verify: bool = True
    #: Seconds between change-feed polls when the feed is idle.
    poll_interval: float = 0.05
    #: Deadline of one Cosmos request (seconds), and the bounded retries around it.
    request_timeout: float = 10.0
    max_retries: int = 5
    #: Longest wait honoured from a 429's retry-after (seconds).
    max_retry_after: float = 5.0
    #: Transactional batch limits (Cosmos: 100 operations, about 1.2 MB of payload).
    max_batch_ops: int = 100
    max_batch_bytes: int = 1_150_000
    #: Seconds a split commit may hold the meta lock before another gateway takes it over.
    lock_ttl: float = 30.0

    def __post_init__(self) -> None:
        if self.connection_string:
            endpoint, key = parse_connection_string(self.connection_string)
            object.__setattr__(self, "endpoint", endpoint)
            object.__setattr__(self, "key", key)
        object.__setattr__(self, "preferred_regions", tuple(self.preferred_regions))
        self.validate()

    def validate(self) -> None:
        if not self.endpoint or not self.key:
            raise ValueError("cosmos: an endpoint and a key (or a connection string) are required")
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"cosmos: invalid endpoint {self.endpoint!r}")
        if not self.database or not self.container:
            raise ValueError("cosmos: database and container names must not be empty")
        if self.consistency not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"cosmos: consistency {self.consistency!r} is not one of "
                + ", ".join(c for c in CONSISTENCY_LEVELS if c)
            )
        if self.throughput is not None and self.throughput < 400:
            raise ValueError("cosmos: throughput must be at least 400 RU/s")
        if not self.connection_verify and not _is_loopback(self.endpoint):
            raise ValueError("cosmos: TLS verification may only be turned off for loopback")
        if not 0 < self.max_batch_ops <= 100:
            raise ValueError("cosmos: max_batch_ops must be in 1..100")

    def replace(self, **changes: object) -> CosmosSettings:
        if "connection_string" not in changes:
            changes["connection_string"] = ""  # endpoint/key already hold its parts
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def scrub(self, text: str) -> str:
        """``text`` with the key (and the connection string) replaced by ``***``."""
        for secret in (self.connection_string, self.key):
            if secret:
                text = text.replace(secret, "***")
        return text
