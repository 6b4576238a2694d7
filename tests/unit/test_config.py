"""Config: etcd-named flags, ETCDGW_* variables, validation messages, and the CLI around them."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from etcdgw import cli
from etcdgw.config import Config, ConfigError, Endpoint
from etcdgw.version import ETCD_VERSION, __version__

NO_ENV: dict[str, str] = {}


def from_args(*argv: str, env: dict[str, str] | None = None) -> Config:
    return Config.from_args(list(argv), NO_ENV if env is None else env)


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_match_etcd() -> None:
    config = from_args()
    assert config.name == "default"
    assert config.data_dir == "default.etcdgw"
    assert config.listen_client_urls == ("http://127.0.0.1:2379",)
    assert config.advertise_client_urls == config.listen_client_urls
    assert config.cert_file is config.key_file is config.trusted_ca_file is None
    assert config.client_cert_auth is False
    assert config.max_request_bytes == 1_572_864  # N01
    assert config.max_message_bytes == 2_097_152  # T11: + 524,288 gRPC overhead
    assert config.max_txn_ops == 128
    assert config.log_level == "info"
    assert config.backend == "embedded"
    assert config == Config()


def test_is_frozen_and_hashable() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    assert hash(config) == hash(Config())
    derived = dataclasses.replace(config, name="n2")
    assert derived.name == "n2" and config.name == "default"


def test_lists_become_tuples() -> None:
    config = Config(listen_client_urls=["http://127.0.0.1:1", "http://127.0.0.1:2"])  # type: ignore[arg-type]
    assert config.listen_client_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert config.advertise_client_urls == config.listen_client_urls


# -- flags and environment --------------------------------------------------------------------


def test_every_flag() -> None:
    config = from_args(
        "--name", "m1",
        "--data-dir", "/var/lib/etcdgw",
        "--listen-client-urls", "http://127.0.0.1:2379, https://10.0.0.1:2379",
        "--advertise-client-urls", "https://gw.example:2379",
        "--cert-file", "server.pem",
        "--key-file", "server-key.pem",
        "--trusted-ca-file", "ca.pem",
        "--client-cert-auth",
        "--max-request-bytes", "1000",
        "--max-txn-ops", "64",
        "--log-level", "DEBUG",
        "--backend", "embedded",
    )  # fmt: skip
    assert config == Config(
        name="m1",
        data_dir="/var/lib/etcdgw",
        listen_client_urls=("http://127.0.0.1:2379", "https://10.0.0.1:2379"),
        advertise_client_urls=("https://gw.example:2379",),
        cert_file="server.pem",
        key_file="server-key.pem",
        trusted_ca_file="ca.pem",
        client_cert_auth=True,
        max_request_bytes=1000,
        max_txn_ops=64,
        log_level="debug",
        backend="embedded",
    )
    assert config.max_message_bytes == 1000 + 524_288
    assert config.logging_level == logging.DEBUG


def test_flag_equals_form_and_boolean_values() -> None:
    assert from_args("--name=x").name == "x"
    assert from_args("--client-cert-auth=false").client_cert_auth is False
    config = from_args(
        "--client-cert-auth=true",
        "--trusted-ca-file=ca.pem",
        "--cert-file=c",
        "--key-file=k",
    )
    assert config.client_cert_auth is True


def test_environment_variables() -> None:
    env = {
        "ETCDGW_NAME": "from-env",
        "ETCDGW_DATA_DIR": "/env/data",
        "ETCDGW_LISTEN_CLIENT_URLS": "http://127.0.0.1:1,http://127.0.0.1:2",
        "ETCDGW_MAX_TXN_OPS": "7",
        "ETCDGW_CLIENT_CERT_AUTH": "true",
        "ETCDGW_TRUSTED_CA_FILE": "ca.pem",
        "PATH": "/usr/bin",  # not ours: ignored silently
    }
    config = Config.from_env(env)
    assert config.name == "from-env"
    assert config.data_dir == "/env/data"
    assert config.listen_client_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert config.max_txn_ops == 7
    assert config.client_cert_auth is True
    assert Config.from_args([], env) == config


def test_flags_win_over_environment() -> None:
    env = {"ETCDGW_DATA_DIR": "/env/data", "ETCDGW_NAME": "env-name"}
    config = from_args("--data-dir", "/flag/data", env=env)
    assert config.data_dir == "/flag/data"
    assert config.name == "env-name"


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCDGW_MAX_REQUEST_BYTES", "4096")
    assert Config.from_env().max_request_bytes == 4096
    assert Config.from_args([]).max_request_bytes == 4096


def test_unknown_etcdgw_variable_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        config = Config.from_env({"ETCDGW_NO_SUCH_FLAG": "1"})
    assert config == Config()
    assert "ETCDGW_NO_SUCH_FLAG" in caplog.text


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ETCDGW_MAX_TXN_OPS": "many"}, "ETCDGW_MAX_TXN_OPS"),
        ({"ETCDGW_CLIENT_CERT_AUTH": "maybe"}, "ETCDGW_CLIENT_CERT_AUTH"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Config.from_env(env)


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        from_args("--max-txn-ops", "lots")
    assert exited.value.code == 2
    assert "--max-txn-ops" in capsys.readouterr().err


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen_client_urls": ("https://127.0.0.1:2379",)}, "https:// but no --cert-file"),
        ({"cert_file": "c.pem"}, "--cert-file and --key-file must be given together"),
        ({"key_file": "k.pem"}, "--cert-file and --key-file must be given together"),
        ({"client_cert_auth": True}, "--client-cert-auth needs --trusted-ca-file"),
        ({"listen_client_urls": ("unix:///tmp/sock",)}, "must start with http://"),
        ({"listen_client_urls": ("grpc://127.0.0.1:1",)}, "must start with http://"),
        ({"listen_client_urls": ("http://127.0.0.1",)}, "has no port"),
        ({"listen_client_urls": ("http://127.0.0.1:99999",)}, "invalid URL"),
        ({"listen_client_urls": ("http://:2379",)}, "has no host"),
        ({"listen_client_urls": ("http://127.0.0.1:2379/v3",)}, "must not have a path"),
        ({"listen_client_urls": ("http://u:p@127.0.0.1:2379",)}, "credentials"),
        ({"listen_client_urls": ()}, "needs at least one URL"),
        (
            {"listen_client_urls": ("http://127.0.0.1:1", "http://127.0.0.1:1")},
            "same URL twice",
        ),
        ({"advertise_client_urls": ("ftp://x:1",)}, "--advertise-client-urls"),
        ({"listen_client_urls": ("http://0.0.0.0:2379",)}, "--advertise-client-urls is required"),
        ({"listen_client_urls": ("http://[::]:2379",)}, "--advertise-client-urls is required"),
        ({"max_request_bytes": 0}, "--max-request-bytes must be positive"),
        ({"max_txn_ops": -1}, "--max-txn-ops must be positive"),
        ({"max_txn_ops": True}, "--max-txn-ops: invalid value"),
        ({"max_txn_ops": "128"}, "--max-txn-ops: invalid value"),
        ({"client_cert_auth": "yes"}, "--client-cert-auth: invalid value"),
        ({"listen_client_urls": "http://127.0.0.1:2379"}, "expected a sequence of URLs"),
        ({"log_level": "chatty"}, "--log-level 'chatty' is not one of"),
        ({"backend": "etcd"}, "--backend 'etcd' is not one of"),
        ({"name": ""}, "--name must not be empty"),
        ({"data_dir": ""}, "--data-dir must not be empty"),
    ],
)
def test_validation_messages(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config(**kwargs)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_listening_on_all_interfaces_with_explicit_advertise_is_fine() -> None:
    config = Config(
        listen_client_urls=("http://0.0.0.0:2379",),
        advertise_client_urls=("http://gw.example:2379",),
    )
    assert config.listen_endpoints == (Endpoint("http", "0.0.0.0", 2379),)


def test_tls_settings() -> None:
    base = {"cert_file": "c.pem", "key_file": "k.pem"}
    server_only = Config(listen_client_urls=("https://127.0.0.1:2379",), **base)  # type: ignore[arg-type]
    assert server_only.requires_client_cert is False
    # As etcd (TLSInfo.ServerConfig): a trusted CA file alone already requires client certs.
    ca_only = dataclasses.replace(server_only, trusted_ca_file="ca.pem")
    assert ca_only.requires_client_cert is True
    mutual = dataclasses.replace(ca_only, client_cert_auth=True)
    assert mutual.requires_client_cert is True


def test_endpoint_parsing() -> None:
    config = Config(
        listen_client_urls=("http://127.0.0.1:0", "https://[::1]:2379", "http://LOCALHOST:1/"),
        cert_file="c",
        key_file="k",
    )
    assert config.listen_endpoints == (
        Endpoint("http", "127.0.0.1", 0),
        Endpoint("https", "::1", 2379),
        Endpoint("http", "localhost", 1),
    )
    assert [e.tls for e in config.listen_endpoints] == [False, True, False]
    assert config.listen_endpoints[1].url == "https://[::1]:2379"
    assert config.listen_endpoints[0].with_port(4242).url == "http://127.0.0.1:4242"


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"etcdgw {__version__} (etcd API {ETCD_VERSION})"
    assert ETCD_VERSION.startswith("3.5.")
    # MT02: k8s needs >= 3.5.13 to use RequestWatchProgress.
    assert tuple(map(int, ETCD_VERSION.split("."))) >= (3, 5, 13)


def test_cli_config_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["serve", "--listen-client-urls", "https://127.0.0.1:0"])
    assert status == 2
    assert "https:// but no --cert-file" in capsys.readouterr().err


def test_cli_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2


def test_cli_serve_help_lists_etcd_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--listen-client-urls",
        "--advertise-client-urls",
        "--data-dir",
        "--name",
        "--cert-file",
        "--key-file",
        "--trusted-ca-file",
        "--client-cert-auth",
        "--max-request-bytes",
        "--max-txn-ops",
        "--log-level",
        "--backend",
        "ETCDGW_DATA_DIR",
    ):
        assert flag in out
