"""python-etcd3 (PyPI ``etcd3`` 0.12.0) used as an application would, against each target.

python-etcd3 ships protobuf modules from an old protoc; tests/conftest.py selects the pure-Python
protobuf implementation before anything imports google.protobuf, which is what lets it import
with protobuf >= 4. (See the comment there.)
"""

from __future__ import annotations

from collections.abc import Iterator

import etcd3
import pytest
from support.procs import Server


def connect(server: Server) -> etcd3.Etcd3Client:
    tls: dict[str, str] = {}
    if server.tls is not None:
        tls["ca_cert"] = str(server.tls.ca)
        if server.client_cert_auth:
            tls["cert_cert"] = str(server.tls.client_cert)
            tls["cert_key"] = str(server.tls.client_key)
    return etcd3.client(
        host=server.host,
        port=server.port,
        timeout=10,
        grpc_options=[("grpc.enable_http_proxy", 0)],
        **tls,
    )


@pytest.fixture
def client(target: Server) -> Iterator[etcd3.Etcd3Client]:
    c = connect(target)
    yield c
    c.close()


def test_put_get(client: etcd3.Etcd3Client, prefix: str) -> None:
    key = prefix + "k"
    put1 = client.put(key, "v1")
    r1 = put1.header.revision
    assert r1 > 0
    put2 = client.put(key, b"v2", prev_kv=True)
    r2 = put2.header.revision
    assert r2 == r1 + 1
    assert put2.prev_kv.value == b"v1" and put2.prev_kv.mod_revision == r1

    value, meta = client.get(key)
    assert value == b"v2"
    assert meta.key == key.encode()
    assert (meta.create_revision, meta.mod_revision, meta.version) == (r1, r2, 2)
    assert meta.lease_id == 0
    assert meta.response_header.revision >= r2

    assert client.get(prefix + "absent") == (None, None)


def test_get_serializable(client: etcd3.Etcd3Client, prefix: str) -> None:
    key = prefix + "k"
    client.put(key, "v")
    value, meta = client.get(key, serializable=True)
    assert value == b"v" and meta.version == 1


def test_get_prefix(client: etcd3.Etcd3Client, prefix: str) -> None:
    for name in ("c", "a", "b"):
        client.put(prefix + name, "v-" + name)
    client.put(prefix[:-1] + "0", "outside")

    got = [(meta.key, value) for value, meta in client.get_prefix(prefix)]
    assert got == [
        ((prefix + "a").encode(), b"v-a"),
        ((prefix + "b").encode(), b"v-b"),
        ((prefix + "c").encode(), b"v-c"),
    ]
    by_create_desc = [
        meta.key
        for _, meta in client.get_prefix(prefix, sort_order="descend", sort_target="create")
    ]
    assert by_create_desc == [(prefix + n).encode() for n in ("b", "a", "c")]
    keys_only = list(client.get_prefix(prefix, keys_only=True))
    assert [v for v, _ in keys_only] == [b"", b"", b""]
    assert [m.key for _, m in keys_only] == [(prefix + n).encode() for n in ("a", "b", "c")]


def test_delete(client: etcd3.Etcd3Client, prefix: str) -> None:
    key = prefix + "k"
    client.put(key, "v")
    assert client.delete(key) is True
    assert client.get(key) == (None, None)
    assert client.delete(key) is False

    client.put(key, "again")
    response = client.delete(key, prev_kv=True, return_response=True)
    assert response.deleted == 1
    assert [kv.value for kv in response.prev_kvs] == [b"again"]

    for name in ("a", "b", "c"):
        client.put(prefix + "sub/" + name, name)
    assert client.delete_prefix(prefix + "sub/").deleted == 3
    assert list(client.get_prefix(prefix)) == []


def test_transaction_compares(client: etcd3.Etcd3Client, prefix: str) -> None:
    key, other = prefix + "k", prefix + "other"
    tx = client.transactions
    r1 = client.put(key, "v1").header.revision
    r2 = client.put(key, "v2").header.revision

    # Every compare target, true: the success branch runs, with its responses in order.
    ok, responses = client.transaction(
        compare=[
            tx.version(key) == 2,
            tx.value(key) == "v2",
            tx.create(key) == r1,
            tx.mod(key) == r2,
            tx.mod(key) > r1,
            tx.version(key) < 3,
            tx.value(key) != "v1",
        ],
        success=[tx.put(other, "from-success"), tx.get(key)],
        failure=[tx.put(other, "from-failure")],
    )
    assert ok is True
    assert len(responses) == 2
    assert responses[0].response_put.header.revision == r2 + 1
    [(value, meta)] = responses[1]
    assert value == b"v2" and meta.mod_revision == r2
    assert client.get(other)[0] == b"from-success"

    # One false compare: the failure branch runs instead.
    ok, responses = client.transaction(
        compare=[tx.version(key) == 2, tx.value(key) == "not-it"],
        success=[tx.put(other, "wrong")],
        failure=[tx.get(other), tx.delete(key)],
    )
    assert ok is False
    [(value, _)] = responses[0]
    assert value == b"from-success"
    assert responses[1].response_delete_range.deleted == 1
    assert client.get(key) == (None, None)


def test_transaction_create_if_absent(client: etcd3.Etcd3Client, prefix: str) -> None:
    key = prefix + "k"
    tx = client.transactions
    # The creation idiom: CREATE == 0 (and VERSION == 0, MOD == 0) hold only for an absent key.
    for compare in (tx.create(key) == 0, tx.version(key) == 0, tx.mod(key) == 0):
        ok, _ = client.transaction(compare=[compare], success=[], failure=[])
        assert ok is True
    # (python-etcd3 0.12 needs failure=[] spelled out: it iterates over None otherwise.)
    ok, _ = client.transaction([tx.create(key) == 0], success=[tx.put(key, "1")], failure=[])
    assert ok is True
    ok, _ = client.transaction([tx.create(key) == 0], success=[tx.put(key, "2")], failure=[])
    assert ok is False
    assert client.get(key)[0] == b"1"
    # The library's own helpers built on the same compares.
    assert client.put_if_not_exists(key, "again") is False
    assert client.put_if_not_exists(prefix + "new", "fresh") is True
    assert client.get(prefix + "new")[0] == b"fresh"
    assert client.replace(key, b"1", b"3") is True
    assert client.replace(key, b"1", b"4") is False
    assert client.get(key)[0] == b"3"


def test_mtls_client(mtls_target: Server, prefix: str) -> None:
    c = connect(mtls_target)
    try:
        key = prefix + "k"
        c.put(key, "over-mtls")
        assert c.get(key)[0] == b"over-mtls"
    finally:
        c.close()
