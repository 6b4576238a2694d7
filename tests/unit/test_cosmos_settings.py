"""Cosmos settings and their flags: validation, connection strings, and the key kept secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etcdgw.backends.cosmos.settings import CosmosSettings, parse_connection_string
from etcdgw.config import Config, ConfigError

SECRET = "c2VjcmV0LWtleS1kby1ub3QtbG9n"


def test_connection_string() -> None:
    endpoint, key = parse_connection_string(
        f"AccountEndpoint=https://acct.documents.azure.com:443/;AccountKey={SECRET};")
    assert (endpoint, key) == ("https://acct.documents.azure.com:443/", SECRET)
    with pytest.raises(ValueError) as e:
        parse_connection_string(f"AccountKey={SECRET}")
    assert SECRET not in str(e.value)


def test_settings_hide_the_key() -> None:
    s = CosmosSettings(endpoint="https://acct.documents.azure.com:443/", key=SECRET)
    assert SECRET not in repr(s)
    assert s.scrub(f"error: key {SECRET} rejected") == "error: key *** rejected"
    assert (s.database, s.container) == ("EtcdDB", "EtcdData")


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        CosmosSettings(endpoint="https://acct.documents.azure.com/")
    with pytest.raises(ValueError, match="loopback"):
        CosmosSettings(endpoint="https://acct.documents.azure.com/", key=SECRET,
                       connection_verify=False)
    CosmosSettings(endpoint="https://127.0.0.1:8081/", key=SECRET, connection_verify=False)
    with pytest.raises(ValueError, match="consistency"):
        CosmosSettings(endpoint="https://a.example/", key=SECRET, consistency="Strongest")


def test_config_flags_and_environment() -> None:
    c = Config.from_args(
        ["--backend", "cosmos", "--cosmos-endpoint", "https://acct.documents.azure.com:443/",
         "--cosmos-database", "D", "--cosmos-preferred-regions", "West Europe, North Europe",
         "--cosmos-throughput", "1000", "--cosmos-consistency", "Session"],
        environ={"ETCDGW_COSMOS_KEY": SECRET},
    )
    assert SECRET not in repr(c)
    s = c.cosmos_settings
    assert (s.endpoint, s.key, s.database, s.container) == (
        "https://acct.documents.azure.com:443/", SECRET, "D", "EtcdData")
    assert s.preferred_regions == ("West Europe", "North Europe")
    assert (s.throughput, s.consistency, s.connection_verify) == (1000, "Session", True)
    cs = Config(backend="cosmos", cosmos_connection_string=(
        f"AccountEndpoint=https://127.0.0.1:8081/;AccountKey={SECRET};"))
    assert SECRET not in repr(cs)
    assert cs.cosmos_settings.connection_verify is False  # loopback: the local server


def test_config_requires_credentials() -> None:
    with pytest.raises(ConfigError, match="--cosmos-endpoint"):
        Config(backend="cosmos", cosmos_endpoint="https://a.example/")
    with pytest.raises(ConfigError) as e:
        Config(backend="cosmos", cosmos_connection_string=f"AccountKey={SECRET}")
    assert SECRET not in str(e.value)


def test_embedded_path_never_imports_the_sdk() -> None:
    code = (
        "import sys, etcdgw.backends, etcdgw.backends.cosmos, etcdgw.backends.embedded\n"
        "from etcdgw.config import Config\n"
        "Config(); Config(backend='cosmos', cosmos_endpoint='https://a.example/', "
        "cosmos_key='eA==').cosmos_settings\n"
        "print([m for m in sys.modules if m.startswith('azure')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
