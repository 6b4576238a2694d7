"""The gateway configuration: one frozen, validated object; the only reader of the environment.

Every setting is named after the etcd flag with the same meaning (``--listen-client-urls``,
``--data-dir``, ...), so operators can carry their etcd command lines over. Each flag can also be
given as an environment variable ``ETCDGW_<FLAG>`` (``ETCDGW_DATA_DIR``), the way etcd reads
``ETCD_<FLAG>``; a flag on the command line wins over the environment.

A :class:`Config` validates itself when it is built (like grpclib's ``Configuration``): an invalid
combination (an ``https://`` URL without a certificate, a key without a certificate, ...) is a
:class:`ConfigError` with a message naming the flag, raised before anything opens a socket or a
file. Nothing here touches the filesystem: whether the certificate files can be loaded is checked
when the gateway starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "ENV_PREFIX",
    "GRPC_OVERHEAD_BYTES",
    "Config",
    "ConfigError",
    "Endpoint",
    "add_arguments",
]

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "ETCDGW_"

#: etcd's defaults (contract N01): the largest write request, and what the gRPC transport adds on
#: top of it before refusing a message outright (1,572,864 + 524,288 = 2,097,152).
DEFAULT_MAX_REQUEST_BYTES: Final = 1_572_864
GRPC_OVERHEAD_BYTES: Final = 524_288
#: etcd's default --quota-backend-bytes (N05).
DEFAULT_QUOTA_BYTES: Final = 2 * 1024**3

BACKENDS: Final = ("embedded", "cosmos")
LOG_LEVELS: Final[Mapping[str, int]] = {
    # etcd's --log-level values, plus Python's spelling of "warn".
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_UNSPECIFIED_HOSTS: Final = frozenset({"0.0.0.0", "::"})


class ConfigError(ValueError):
    """An invalid setting; the message names the flag and says what is wrong."""


@dataclass(frozen=True)
class Endpoint:
    """One parsed client URL: ``http://`` is gRPC over h2c, ``https://`` gRPC over TLS."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def with_port(self, port: int) -> Endpoint:
        return dataclasses.replace(self, port=port)

    @classmethod
    def parse(cls, url: str, flag: str) -> Endpoint:
        """Parse ``scheme://host:port``; anything else is a ConfigError naming ``flag``."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--{flag}: invalid URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"--{flag}: URL {url!r} must start with http:// (h2c) or https:// (TLS)"
            )
        if not parts.hostname:
            raise ConfigError(f"--{flag}: URL {url!r} has no host (use 0.0.0.0 for all)")
        if port is None:
            raise ConfigError(f"--{flag}: URL {url!r} has no port")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"--{flag}: URL {url!r} must not carry credentials")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"--{flag}: URL {url!r} must not have a path, query or fragment")
        scheme: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
        return cls(scheme, parts.hostname, port)


@dataclass(frozen=True)
class Config:
    """Settings of one gateway process; build with ``Config(...)``, :meth:`from_args` or
    :meth:`from_env`. Instances are immutable; use :func:`dataclasses.replace` to derive one."""

    #: Human-readable member name (MemberList ``name``).
    name: str = "default"
    #: Where the embedded backend keeps its files.
    data_dir: str = "default.etcdgw"
    #: URLs to serve gRPC on; several URLs give several listeners. Port 0 picks a free port.
    listen_client_urls: tuple[str, ...] = ("http://127.0.0.1:2379",)
    #: URLs clients are told to use (MemberList ``clientURLs``); empty = the listen URLs.
    advertise_client_urls: tuple[str, ...] = ()
    #: PEM certificate (chain) and key served on https:// URLs.
    cert_file: str | None = None
    key_file: str | None = None
    #: PEM CA bundle client certificates must chain to. As in etcd, setting it alone already
    #: makes client certificates mandatory.
    trusted_ca_file: str | None = None
    #: Require and verify a client certificate on https:// URLs.
    client_cert_auth: bool = False
    #: Largest write request (Put, DeleteRange, Txn, ...) accepted, in bytes of its encoding.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Most operations in one Txn branch.
    max_txn_ops: int = 128
    log_level: str = "info"
    #: Where the revision log lives: "embedded" (SQLite under data_dir) or "cosmos" (Azure
    #: Cosmos DB, shared by several gateways; the cosmos_* settings).
    backend: str = "embedded"
    #: Cosmos DB account: endpoint + key, or a connection string holding both. The key is a
    #: secret: it never appears in repr() or in an error message.
    cosmos_endpoint: str | None = None
    cosmos_key: str | None = field(default=None, repr=False)
    cosmos_connection_string: str | None = field(default=None, repr=False)
    cosmos_database: str = "EtcdDB"
    cosmos_container: str = "EtcdData"
    #: RU/s for a container created on first start (0: the account's default).
    cosmos_throughput: int = 0
    #: Consistency level for this client ("": the account's default).
    cosmos_consistency: str = ""
    #: Comma-separated preferred regions, in order.
    cosmos_preferred_regions: str = ""
    #: Seconds between progress notifications to watchers that asked for them (etcd's
    #: --experimental-watch-progress-notify-interval, default 10 min, floor 100 ms: W21, N03).
    watch_progress_notify_interval: float = 600.0
    #: Backend size that raises the NOSPACE alarm (etcd's default 2 GiB; 0 = that default,
    #: negative = no quota).
    quota_backend_bytes: int = DEFAULT_QUOTA_BYTES
    #: Extra plain-HTTP listeners for /metrics and the health endpoints (etcd's flag).
    listen_metrics_urls: tuple[str, ...] = ()
    #: "periodic" (keep a time window of history) or "revision" (keep N revisions).
    auto_compaction_mode: str = "periodic"
    #: periodic: a duration ("1h", "30m") or a number of hours; revision: a number of
    #: revisions; "0" turns auto compaction off.
    auto_compaction_retention: str = "0"

    def __post_init__(self) -> None:
        # Lists arrive from callers as lists; keep the object hashable and truly immutable.
        for name in ("listen_client_urls", "advertise_client_urls", "listen_metrics_urls"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ConfigError(f"--{_flag(name)}: expected a sequence of URLs, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.log_level, str):
            object.__setattr__(self, "log_level", self.log_level.lower())
        for name, kind in _FIELD_KINDS.items():
            _check_type(name, getattr(self, name), kind)
        if not self.advertise_client_urls:
            object.__setattr__(self, "advertise_client_urls", self.listen_client_urls)
            for endpoint in self.listen_endpoints:
                if endpoint.host in _UNSPECIFIED_HOSTS:
                    raise ConfigError(
                        "--advertise-client-urls is required when --listen-client-urls "
                        f"listens on all interfaces ({endpoint.url}): clients cannot dial "
                        f"{endpoint.host}"
                    )
        self._validate()

    # -- derived values -------------------------------------------------------------------

    @property
    def listen_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(Endpoint.parse(u, "listen-client-urls") for u in self.listen_client_urls)

    @property
    def advertise_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(Endpoint.parse(u, "advertise-client-urls") for u in self.advertise_client_urls)

    @property
    def metrics_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(Endpoint.parse(u, "listen-metrics-urls") for u in self.listen_metrics_urls)

    @property
    def quota_bytes(self) -> int:
        """The effective backend quota in bytes; 0 when there is none."""
        if self.quota_backend_bytes == 0:
            return DEFAULT_QUOTA_BYTES
        return max(self.quota_backend_bytes, 0)

    @property
    def auto_compaction(self) -> tuple[str, float] | None:
        """("periodic", seconds) or ("revision", revisions kept), or None when off."""
        mode, text = self.auto_compaction_mode, self.auto_compaction_retention.strip()
        if mode == "revision":
            amount = float(_parse_int(text))
        else:
            try:
                amount = float(text) * 3600.0  # a bare number is hours, as in etcd
            except ValueError:
                amount = _parse_duration(text)
        return None if amount <= 0 else (mode, amount)

    @property
    def cosmos_settings(self) -> Any:
        """The CosmosSettings of --backend cosmos (etcdgw.backends.cosmos.CosmosSettings;
        importing it does not import the SDK). TLS verification is off only for a loopback
        endpoint (the local emulator or test server, whose certificates are self-signed)."""
        from etcdgw.backends.cosmos.settings import CosmosSettings, _is_loopback

        endpoint = self.cosmos_endpoint or ""
        if self.cosmos_connection_string:
            from etcdgw.backends.cosmos.settings import parse_connection_string

            endpoint = parse_connection_string(self.cosmos_connection_string)[0]
        return CosmosSettings(
            endpoint=self.cosmos_endpoint or "",
            key=self.cosmos_key or "",
            connection_string=self.cosmos_connection_string or "",
            database=self.cosmos_database,
            container=self.cosmos_container,
            throughput=self.cosmos_throughput or None,
            consistency=self.cosmos_consistency,
            preferred_regions=tuple(
                r.strip() for r in self.cosmos_preferred_regions.split(",") if r.strip()),
            connection_verify=not _is_loopback(endpoint),
        )

    @property
    def max_message_bytes(self) -> int:
        """The transport's inbound limit: larger messages are refused before being read (T11)."""
        return self.max_request_bytes + GRPC_OVERHEAD_BYTES

    @property
    def requires_client_cert(self) -> bool:
        # etcd's TLSInfo.ServerConfig: a trusted CA file alone already turns on
        # RequireAndVerifyClientCert; --client-cert-auth without one is refused in _validate.
        return self.client_cert_auth or self.trusted_ca_file is not None

    @property
    def logging_level(self) -> int:
        return LOG_LEVELS[self.log_level]

    # -- validation -----------------------------------------------------------------------

    def _validate(self) -> None:
        if not self.name:
            raise ConfigError("--name must not be empty")
        if not self.data_dir:
            raise ConfigError("--data-dir must not be empty")
        if not self.listen_client_urls:
            raise ConfigError("--listen-client-urls needs at least one URL")
        listen = self.listen_endpoints
        if not self.advertise_endpoints:
            raise ConfigError("--advertise-client-urls needs at least one URL")
        fixed = [e for e in listen if e.port != 0]  # each port 0 is a listener of its own
        if len(set(fixed)) != len(fixed):
            raise ConfigError("--listen-client-urls lists the same URL twice")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("--cert-file and --key-file must be given together")
        tls_urls = [e.url for e in listen if e.tls]
        if tls_urls and self.cert_file is None:
            raise ConfigError(
                f"--listen-client-urls {', '.join(tls_urls)} uses https:// but no "
                "--cert-file/--key-file is set"
            )
        if self.client_cert_auth and self.trusted_ca_file is None:
            raise ConfigError("--client-cert-auth needs --trusted-ca-file (the clients' CA)")
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        if self.max_txn_ops <= 0:
            raise ConfigError("--max-txn-ops must be positive")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"--log-level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        if self.watch_progress_notify_interval < 0.1:
            raise ConfigError("--watch-progress-notify-interval must be at least 100ms")
        if self.auto_compaction_mode not in ("periodic", "revision"):
            raise ConfigError(
                f"--auto-compaction-mode {self.auto_compaction_mode!r} is not one of "
                "periodic, revision"
            )
        try:
            self.auto_compaction  # noqa: B018 - parsed for validation
        except ValueError as exc:
            raise ConfigError(f"--auto-compaction-retention: {exc}") from None
        for endpoint in self.metrics_endpoints:
            if endpoint.tls:
                raise ConfigError(
                    f"--listen-metrics-urls {endpoint.url}: only http:// is supported"
                )
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "cosmos":
            if not self.cosmos_connection_string and not (
                    self.cosmos_endpoint and self.cosmos_key):
                raise ConfigError(
                    "--backend cosmos needs --cosmos-endpoint and --cosmos-key, or "
                    "--cosmos-connection-string")
            try:
                self.cosmos_settings  # noqa: B018 - built for validation
            except ValueError as exc:
                raise ConfigError(f"--cosmos-*: {exc}") from None

    # -- construction from the outside world ----------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Settings from ``ETCDGW_*`` variables only (``environ`` defaults to os.environ)."""
        return cls(**_values_from_env(os.environ if environ is None else environ))

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Settings from command-line flags over ``ETCDGW_*`` variables over the defaults.

        Bad flag syntax exits like any argparse program (status 2); bad values raise
        ConfigError.
        """
        parser = argparse.ArgumentParser(prog="etcdgw serve")
        add_arguments(parser)
        namespace = parser.parse_args(argv)
        return cls.from_namespace(namespace, environ)

    @classmethod
    def from_namespace(
        cls, namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Combine parsed flags (from :func:`add_arguments`) with the environment."""
        values = _values_from_env(os.environ if environ is None else environ)
        for name in _FIELD_KINDS:
            given = getattr(namespace, name, None)
            if given is not None:
                values[name] = given
        return cls(**values)


# -- flags and environment variables ---------------------------------------------------------

_Kind = Literal["str", "optional_str", "urls", "bool", "int", "duration"]

_FIELD_KINDS: Final[dict[str, _Kind]] = {
    "name": "str",
    "data_dir": "str",
    "listen_client_urls": "urls",
    "advertise_client_urls": "urls",
    "cert_file": "optional_str",
    "key_file": "optional_str",
    "trusted_ca_file": "optional_str",
    "client_cert_auth": "bool",
    "max_request_bytes": "int",
    "max_txn_ops": "int",
    "log_level": "str",
    "backend": "str",
    "cosmos_endpoint": "optional_str",
    "cosmos_key": "optional_str",
    "cosmos_connection_string": "optional_str",
    "cosmos_database": "str",
    "cosmos_container": "str",
    "cosmos_throughput": "int",
    "cosmos_consistency": "str",
    "cosmos_preferred_regions": "str",
    "watch_progress_notify_interval": "duration",
    "quota_backend_bytes": "int",
    "listen_metrics_urls": "urls",
    "auto_compaction_mode": "str",
    "auto_compaction_retention": "str",
}

_HELP: Final[dict[str, str]] = {
    "name": "human-readable name of this member (default: default)",
    "data_dir": "directory of the embedded backend's files (default: default.etcdgw)",
    "listen_client_urls": "comma-separated URLs to serve gRPC on, http:// (h2c) or https:// "
    "(TLS) (default: http://127.0.0.1:2379)",
    "advertise_client_urls": "comma-separated URLs clients should use (default: the listen URLs)",
    "cert_file": "PEM certificate (chain) for https:// URLs",
    "key_file": "PEM private key for --cert-file",
    "trusted_ca_file": "PEM CA bundle for client certificates; requires client certificates",
    "client_cert_auth": "require a client certificate signed by --trusted-ca-file",
    "max_request_bytes": "largest write request accepted, in bytes (default: 1572864)",
    "max_txn_ops": "most operations in a txn branch (default: 128)",
    "log_level": f"one of {', '.join(LOG_LEVELS)} (default: info)",
    "backend": f"revision log backend, one of {', '.join(BACKENDS)} (default: embedded)",
    "cosmos_endpoint": "Cosmos DB account endpoint, https://ACCOUNT.documents.azure.com:443/",
    "cosmos_key": "Cosmos DB account key (prefer the environment variable: flags are visible "
    "to other local users)",
    "cosmos_connection_string": "Cosmos DB connection string AccountEndpoint=...;AccountKey=...;"
    " (instead of --cosmos-endpoint and --cosmos-key)",
    "cosmos_database": "Cosmos DB database, created if missing (default: EtcdDB)",
    "cosmos_container": "Cosmos DB container, created if missing (default: EtcdData)",
    "cosmos_throughput": "RU/s of a container created on first start (default: 0, the "
    "account's default)",
    "cosmos_consistency": "consistency level of the Cosmos client: Strong, BoundedStaleness, "
    "Session, ConsistentPrefix or Eventual (default: the account's)",
    "cosmos_preferred_regions": "comma-separated Azure regions to prefer, in order",
    "watch_progress_notify_interval": "interval of watch progress notifications, a duration "
    "like 10m, 1s or 100ms, or seconds (default: 10m)",
    "quota_backend_bytes": "backend size that raises the NOSPACE alarm, in bytes (default: "
    "2147483648; 0: the default; negative: no quota)",
    "listen_metrics_urls": "comma-separated http:// URLs to also serve /metrics and /health on",
    "auto_compaction_mode": "periodic or revision (default: periodic)",
    "auto_compaction_retention": "periodic: history to keep, a duration like 1h or hours; "
    "revision: revisions to keep; 0 disables (default: 0)",
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_urls(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_int(text: str) -> int:
    return int(text.strip().replace("_", ""))


_DURATION_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|ns)")


def _parse_duration(text: str) -> float:
    """Seconds from a Go duration ("10m", "1m30s", "100ms") or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (examples: 10m, 1s, 100ms)")
    return total


_PARSERS: Final[dict[_Kind, Callable[[str], Any]]] = {
    "str": str,
    "optional_str": lambda text: text or None,
    "urls": _parse_urls,
    "bool": _parse_bool,
    "int": _parse_int,
    "duration": _parse_duration,
}


def _argparse_type(kind: _Kind, name: str) -> Callable[[str], Any]:
    parse = _PARSERS[kind]

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            # argparse shows ArgumentTypeError messages as they are.
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in its own messages
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting as an etcd-style flag; unset flags parse as None (see from_namespace)."""
    for name, kind in _FIELD_KINDS.items():
        help_text = f"{_HELP[name]} [env {_env_name(name)}]"
        if kind == "bool":
            # etcd accepts both "--client-cert-auth" and "--client-cert-auth=false".
            parser.add_argument(
                f"--{_flag(name)}",
                dest=name,
                nargs="?",
                const=True,
                default=None,
                type=_argparse_type(kind, name),
                metavar="BOOL",
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{_flag(name)}",
                dest=name,
                default=None,
                type=_argparse_type(kind, name),
                metavar=name.upper(),
                help=help_text,
            )


def _values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = {_env_name(name): name for name in _FIELD_KINDS}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = known.get(key)
        if name is None:
            # etcd warns about unrecognized ETCD_* variables instead of failing; so do we.
            log.warning("ignoring unrecognized environment variable %s", key)
            continue
        try:
            values[name] = _PARSERS[_FIELD_KINDS[name]](text)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return values


def _check_type(name: str, value: Any, kind: _Kind) -> None:
    ok: bool
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "optional_str":
        ok = value is None or isinstance(value, str)
    elif kind == "urls":
        ok = all(isinstance(item, str) for item in value)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "duration":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"--{_flag(name)}: invalid value {value!r} (expected {kind})")


# Every dataclass field must have a flag, and every flag a field: a missing entry would silently
# make a setting unreachable from the command line.
assert set(_FIELD_KINDS) == {f.name for f in dataclasses.fields(Config)} == set(_HELP)
