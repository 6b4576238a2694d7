"""etcdctl (Debian's 3.4 client, ETCDCTL_API=3) used as a user would, against each target.

Every test runs on "etcd" (the oracle) and on "etcdgw". Servers are shared by the tests of this
module, so each test works under its own ``prefix`` and reads revisions from responses instead of
assuming them. JSON output (``-w json``) is compared field by field after removing only
cluster_id, member_id and raft_term, which legitimately differ between servers.

etcd 3.4 notes (where the client or server shows its age):
- etcdctl 3.4 has no ``get --count-only``: counts are read from ``-w json`` (``count``, ``more``).
- ``get --keys-only`` prints each key followed by an empty line.
- ``-w json`` omits zero values (no ``kvs`` and no ``count`` for an empty result, no ``more`` when
  false) and writes bytes as base64; headers inside txn sub-responses carry only ``revision``.
- A failing request makes etcdctl log a "retrying of unary invoker failed" line that names the
  gRPC code, then print ``Error: <server message>`` and exit 1; both are checked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from support.cosmos import target_with_cosmos
from support.etcdctl import CtlResult, Etcdctl
from support.procs import Server

TXN_PROMPTS = "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"

target = target_with_cosmos  # also on "etcdgw-cosmos": etcdgw on the Cosmos backend

# ---------------------------------------------------------------------------------------------
# helpers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def normalized(doc: Any) -> Any:
    """The JSON document without cluster_id, member_id and raft_term (in every header)."""
    if isinstance(doc, dict):
        return {
            k: normalized(v)
            for k, v in doc.items()
            if k not in ("cluster_id", "member_id", "raft_term")
        }
    if isinstance(doc, list):
        return [normalized(v) for v in doc]
    return doc


def kv(key: str, value: str | None, create: int, mod: int, version: int) -> dict[str, Any]:
    """One KeyValue as etcdctl -w json prints it (value omitted for --keys-only)."""
    out: dict[str, Any] = {
        "key": b64(key),
        "create_revision": create,
        "mod_revision": mod,
        "version": version,
    }
    if value is not None:
        out["value"] = b64(value)
    return out


def put_rev(ctl: Etcdctl, key: str, value: str) -> int:
    """Put and return the revision it created (from ``put -w json``)."""
    doc = ctl("put", key, value, "-w", "json").json()
    rev: int = doc["header"]["revision"]
    return rev


def current_rev(ctl: Etcdctl, prefix: str) -> int:
    rev: int = ctl("get", prefix + "~none", "-w", "json").json()["header"]["revision"]
    return rev


def error_of(result: CtlResult) -> str:
    """The ``Error: ...`` line etcdctl prints on failure (without the ``Error: `` part)."""
    assert result.rc != 0, f"expected etcdctl to fail:\n{result}"
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert lines, f"no 'Error:' line:\n{result}"
    return lines[-1][len("Error: ") :]


def assert_fails_with(result: CtlResult, grpc_code: str, message: str) -> None:
    assert error_of(result) == message, str(result)
    # etcdctl's retry interceptor logs the status it got: the gRPC code must match etcd's too.
    assert f"code = {grpc_code} desc = {message}" in result.stderr, str(result)


def txn(
    ctl: Etcdctl,
    compares: list[str],
    success: list[str],
    failure: list[str],
    *flags: str,
    check: bool = True,
) -> CtlResult:
    """Run ``etcdctl txn -i`` feeding the three blocks the way a user types them."""
    script = "\n".join([*compares, "", *success, "", *failure, ""]) + "\n"
    return ctl("txn", "-i", *flags, input=script, check=check)


# ---------------------------------------------------------------------------------------------
# put / get


def test_put_get(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "greeting"
    assert etcdctl("put", key, "hello world").stdout == "OK\n"
    assert etcdctl("get", key).lines == [key, "hello world"]
    assert etcdctl("put", key, "second").stdout == "OK\n"
    assert etcdctl("get", key).lines == [key, "second"]


def test_put_prev_kv(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    assert etcdctl("put", key, "v1", "--prev-kv").stdout == "OK\n"  # nothing before
    assert etcdctl("put", key, "v2", "--prev-kv").lines == ["OK", key, "v1"]


def test_put_and_get_json_fields(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    put1 = etcdctl("put", key, "v1", "-w", "json").json()
    rev1 = put1["header"]["revision"]
    assert normalized(put1) == {"header": {"revision": rev1}}
    rev2 = put_rev(etcdctl, key, "v2")
    assert rev2 == rev1 + 1  # one revision per write, dense (contract M03)

    got = normalized(etcdctl("get", key, "-w", "json").json())
    assert got == {
        "header": {"revision": rev2},
        "kvs": [kv(key, "v2", create=rev1, mod=rev2, version=2)],
        "count": 1,
    }


def test_get_missing_key(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "absent"
    assert etcdctl("get", key).stdout == ""
    doc = etcdctl("get", key, "-w", "json").json()
    # An empty result carries only the header (kvs and count are zero values, omitted).
    assert set(doc) == {"header"}, doc
    assert doc["header"]["revision"] >= 1


def test_put_empty_key_is_rejected(etcdctl: Etcdctl) -> None:
    result = etcdctl("put", "", "v", check=False)
    assert_fails_with(result, "InvalidArgument", "etcdserver: key is not provided")


def test_get_prefix_and_range(etcdctl: Etcdctl, prefix: str) -> None:
    for name in ("b", "a", "c", "c/d"):
        etcdctl("put", prefix + name, "v-" + name)
    # A key that shares the prefix text minus its last byte must not appear.
    outside = prefix[:-1] + "0"
    etcdctl("put", outside, "x")

    assert etcdctl("get", "--prefix", prefix).lines == [
        prefix + "a", "v-a",
        prefix + "b", "v-b",
        prefix + "c", "v-c",
        prefix + "c/d", "v-c/d",
    ]  # fmt: skip
    # `get KEY RANGE_END` is the half-open interval [KEY, RANGE_END).
    assert etcdctl("get", prefix + "a", prefix + "c").lines == [
        prefix + "a", "v-a",
        prefix + "b", "v-b",
    ]  # fmt: skip
    assert etcdctl("get", outside).lines == [outside, "x"]


def test_get_from_key(etcdctl: Etcdctl, prefix: str) -> None:
    for name in ("a", "b", "c"):
        etcdctl("put", prefix + name, name)
    start = prefix + "b"
    doc = etcdctl("get", "--from-key", start, "-w", "json").json()
    keys = [base64.b64decode(k["key"]).decode() for k in doc["kvs"]]
    # Every key >= start, in ascending order; other tests' keys may follow ours.
    assert keys == sorted(keys)
    assert all(k >= start for k in keys)
    assert [k for k in keys if k.startswith(prefix)] == [prefix + "b", prefix + "c"]
    assert doc["count"] == len(keys)
    # Simple output of the same range starts with our two keys.
    assert etcdctl("get", "--from-key", start, "--limit", "2").lines == [
        prefix + "b", "b", prefix + "c", "c",
    ]  # fmt: skip


def test_get_rev_history(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    r1 = put_rev(etcdctl, key, "one")
    r2 = put_rev(etcdctl, key, "two")
    etcdctl("del", key)
    r4 = put_rev(etcdctl, key, "four")

    assert etcdctl("get", key, f"--rev={r1}").lines == [key, "one"]
    assert etcdctl("get", key, f"--rev={r2}").lines == [key, "two"]
    assert etcdctl("get", key, f"--rev={r2 + 1}").stdout == ""  # deleted at r2 + 1
    assert etcdctl("get", key, f"--rev={r1 - 1}").stdout == ""  # before it existed
    assert etcdctl("get", key).lines == [key, "four"]

    # The header of a historical read is the *current* revision; the kv is as it was.
    doc = normalized(etcdctl("get", key, f"--rev={r2}", "-w", "json").json())
    assert doc["kvs"] == [kv(key, "two", create=r1, mod=r2, version=2)]
    assert doc["header"]["revision"] >= r4
    # Recreated after a delete: a new create_revision and version 1.
    assert normalized(etcdctl("get", key, "-w", "json").json())["kvs"] == [
        kv(key, "four", create=r4, mod=r4, version=1)
    ]


def test_get_future_rev_fails(etcdctl: Etcdctl, prefix: str) -> None:
    future = current_rev(etcdctl, prefix) + 1000
    result = etcdctl("get", prefix + "k", f"--rev={future}", check=False)
    assert_fails_with(result, "OutOfRange", FUTURE_REV)


def test_get_limit_count_and_more(etcdctl: Etcdctl, prefix: str) -> None:
    for name in ("a", "b", "c"):
        etcdctl("put", prefix + name, name)
    doc = etcdctl("get", "--prefix", prefix, "--limit", "2", "-w", "json").json()
    assert [k["key"] for k in doc["kvs"]] == [b64(prefix + "a"), b64(prefix + "b")]
    assert doc["count"] == 3  # count is the total in range, not the number returned
    assert doc["more"] is True
    doc = etcdctl("get", "--prefix", prefix, "--limit", "3", "-w", "json").json()
    assert len(doc["kvs"]) == 3 and doc["count"] == 3
    assert "more" not in doc  # false is omitted
    # etcdctl 3.4 has no --count-only: the count of a prefix comes from -w json.
    assert etcdctl("get", "--prefix", prefix, "-w", "json").json()["count"] == 3


@pytest.fixture
def sort_fixture(etcdctl: Etcdctl, prefix: str) -> dict[str, list[str]]:
    """Three keys whose orders by KEY, CREATE, MODIFY, VERSION and VALUE all differ.

    Returns the expected ASCEND order (key suffixes) for each sort target.
    """
    for name, value in (("c", "c1"), ("a", "a1"), ("b", "mm"), ("c", "c2"), ("c", "aa")):
        etcdctl("put", prefix + name, value)
    etcdctl("put", prefix + "a", "zz")
    # final: a=zz (create 2nd, mod 6th, version 2), b=mm (3rd, 3rd, 1), c=aa (1st, 5th, 3)
    return {
        "KEY": ["a", "b", "c"],
        "CREATE": ["c", "a", "b"],
        "MODIFY": ["b", "c", "a"],
        "VERSION": ["b", "a", "c"],
        "VALUE": ["c", "b", "a"],
    }


@pytest.mark.parametrize("sort_by", ["KEY", "CREATE", "MODIFY", "VERSION", "VALUE"])
@pytest.mark.parametrize("order", ["ASCEND", "DESCEND", None])
def test_get_sort(
    etcdctl: Etcdctl,
    prefix: str,
    sort_fixture: dict[str, list[str]],
    sort_by: str,
    order: str | None,
) -> None:
    expected = sort_fixture[sort_by]
    if order == "DESCEND":
        expected = expected[::-1]
    # With --sort-by and no --order etcdctl sends sort_order NONE; the server then sorts
    # ascending by the target (contract R11).
    flags = [f"--sort-by={sort_by}"] + ([f"--order={order}"] if order else [])
    got = etcdctl("get", "--prefix", prefix, *flags, "--keys-only").lines
    assert got[::2] == [prefix + n for n in expected], got

    doc = etcdctl("get", "--prefix", prefix, *flags, "--limit=1", "-w", "json").json()
    if order is None:
        # etcd quirk (3.4 and main alike, rangeLimit() in etcd's txn/range code): only a
        # sort_order other than NONE makes the server fetch the whole range before sorting. With
        # NONE it fetches limit + 1 keys in key order (the extra one computes `more`), sorts
        # those ascending by the target, then truncates to the limit.
        fetched = sort_fixture["KEY"][:2]
        first = prefix + min(fetched, key=expected.index)
    else:
        # With an explicit order, the limit applies after the full sort (contract R12).
        first = prefix + expected[0]
    assert [k["key"] for k in doc["kvs"]] == [b64(first)]
    assert doc["count"] == 3 and doc["more"] is True


def test_get_order_without_sort_by_sorts_keys(etcdctl: Etcdctl, prefix: str) -> None:
    for name in ("b", "a", "c"):
        etcdctl("put", prefix + name, name)
    got = etcdctl("get", "--prefix", prefix, "--order=DESCEND", "--keys-only").lines
    assert got[::2] == [prefix + "c", prefix + "b", prefix + "a"]


def test_get_keys_only(etcdctl: Etcdctl, prefix: str) -> None:
    r1 = put_rev(etcdctl, prefix + "a", "value-a")
    r2 = put_rev(etcdctl, prefix + "b", "value-b")
    # etcdctl 3.4 prints each key followed by an empty line.
    assert etcdctl("get", "--prefix", prefix, "--keys-only").lines == [
        prefix + "a", "", prefix + "b", "",
    ]  # fmt: skip
    doc = normalized(etcdctl("get", "--prefix", prefix, "--keys-only", "-w", "json").json())
    assert doc["kvs"] == [
        kv(prefix + "a", None, create=r1, mod=r1, version=1),
        kv(prefix + "b", None, create=r2, mod=r2, version=1),
    ]
    assert doc["count"] == 2


def test_get_serializable(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    rev = put_rev(etcdctl, key, "v")
    assert etcdctl("get", key, "--consistency=s").lines == [key, "v"]
    doc = normalized(etcdctl("get", key, "--consistency=s", "-w", "json").json())
    assert doc["kvs"] == [kv(key, "v", create=rev, mod=rev, version=1)]
    assert doc["header"]["revision"] >= rev


# ---------------------------------------------------------------------------------------------
# del


def test_del_single_with_prev_kv(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    etcdctl("put", key, "v")
    assert etcdctl("del", key, "--prev-kv").lines == ["1", key, "v"]
    assert etcdctl("get", key).stdout == ""
    assert etcdctl("del", key).lines == ["0"]  # already gone: nothing deleted, still exit 0


def test_del_prefix(etcdctl: Etcdctl, prefix: str) -> None:
    for name in ("a", "b", "c"):
        etcdctl("put", prefix + name, name)
    outside = prefix[:-1] + "0"
    etcdctl("put", outside, "keep")
    before = current_rev(etcdctl, prefix)
    assert etcdctl("del", "--prefix", prefix).lines == ["3"]
    assert etcdctl("get", "--prefix", prefix).stdout == ""
    assert etcdctl("get", outside).lines == [outside, "keep"]
    # Deleting three keys is one write: one new revision.
    assert current_rev(etcdctl, prefix) == before + 1


def test_del_json_prev_kvs(etcdctl: Etcdctl, prefix: str) -> None:
    r1 = put_rev(etcdctl, prefix + "a", "1")
    r2 = put_rev(etcdctl, prefix + "b", "2")
    doc = normalized(etcdctl("del", "--prefix", prefix, "--prev-kv", "-w", "json").json())
    assert doc == {
        "header": {"revision": r2 + 1},
        "deleted": 2,
        "prev_kvs": [
            kv(prefix + "a", "1", create=r1, mod=r1, version=1),
            kv(prefix + "b", "2", create=r2, mod=r2, version=1),
        ],
    }
    # Deleting nothing writes nothing: the revision does not move.
    doc = normalized(etcdctl("del", "--prefix", prefix, "-w", "json").json())
    assert doc == {"header": {"revision": r2 + 1}}


# ---------------------------------------------------------------------------------------------
# txn (interactive)


def test_txn_create_if_absent(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    compare = [f'mod("{key}") = "0"']
    first = txn(etcdctl, compare, [f"put {key} v1", f"get {key}"], [f"get {key}"])
    assert first.stdout == TXN_PROMPTS + f"SUCCESS\n\nOK\n\n{key}\nv1\n"
    second = txn(etcdctl, compare, [f"put {key} v2"], [f"get {key}"])
    assert second.stdout == TXN_PROMPTS + f"FAILURE\n\n{key}\nv1\n"
    assert etcdctl("get", key).lines == [key, "v1"]


def test_txn_value_and_multiple_compares(etcdctl: Etcdctl, prefix: str) -> None:
    key, other = prefix + "k", prefix + "other"
    etcdctl("put", key, "v")
    ok = txn(
        etcdctl,
        [f'value("{key}") = "v"', f'mod("{key}") > "0"', f'version("{key}") = "1"'],
        [f"put {other} x", f"del {key} --prev-kv"],
        [f"put {other} failed"],
    )
    assert ok.stdout == TXN_PROMPTS + f"SUCCESS\n\nOK\n\n1\n{key}\nv\n"
    # Both operations happened at one revision, the txn's.
    doc = etcdctl("get", other, "-w", "json").json()
    assert doc["kvs"][0]["mod_revision"] == doc["header"]["revision"]
    assert etcdctl("get", key).stdout == ""

    # One false compare (value now absent) makes the whole txn take the failure branch.
    ko = txn(
        etcdctl,
        [f'value("{other}") = "x"', f'value("{key}") = "v"'],
        [f"put {other} wrong"],
        [f"put {other} failed", f"get {other}"],
    )
    assert ko.stdout == TXN_PROMPTS + f"FAILURE\n\nOK\n\n{other}\nfailed\n"


def txn_json(ctl: Etcdctl, compares: list[str], success: list[str], failure: list[str]) -> Any:
    result = txn(ctl, compares, success, failure, "-w", "json")
    assert result.stdout.startswith(TXN_PROMPTS), str(result)
    return normalized(json.loads(result.stdout[len(TXN_PROMPTS) :]))


def test_txn_json(etcdctl: Etcdctl, prefix: str) -> None:
    key, absent = prefix + "k", prefix + "absent"
    r1 = put_rev(etcdctl, key, "v1")
    r2 = put_rev(etcdctl, key, "v2")
    body = txn_json(
        etcdctl,
        [f'version("{key}") = "2"', f'create("{key}") = "{r1}"', f'mod("{key}") < "{r2 + 1}"'],
        [f"get {key}", f"put {key} v3", f"get {key}", f"del {absent}"],
        [],
    )
    r3 = r2 + 1
    # Sub-response headers carry only a revision: the store revision as that op saw it, i.e. the
    # revision before the txn until its first write, the txn's revision after it. Deleting
    # nothing is not a write.
    assert body == {
        "header": {"revision": r3},
        "succeeded": True,
        "responses": [
            {
                "Response": {
                    "ResponseRange": {
                        "header": {"revision": r2},
                        "kvs": [kv(key, "v2", create=r1, mod=r2, version=2)],
                        "count": 1,
                    }
                }
            },
            {"Response": {"ResponsePut": {"header": {"revision": r3}}}},
            {
                "Response": {
                    "ResponseRange": {
                        "header": {"revision": r3},
                        "kvs": [kv(key, "v3", create=r1, mod=r3, version=3)],
                        "count": 1,
                    }
                }
            },
            {"Response": {"ResponseDeleteRange": {"header": {"revision": r3}}}},
        ],
    }
    # A failed txn with no failure ops writes nothing: the revision stays, and succeeded=false
    # and the empty responses list are omitted from the JSON.
    failed = txn_json(etcdctl, [f'version("{key}") = "99"'], [f"put {key} nope"], [])
    assert failed == {"header": {"revision": r3}}
    # A read-only txn does not move the revision either.
    read_only = txn_json(etcdctl, [], [f"get {absent}"], [])
    assert read_only == {
        "header": {"revision": r3},
        "succeeded": True,
        "responses": [{"Response": {"ResponseRange": {"header": {"revision": r3}}}}],
    }


def test_txn_duplicate_key_is_rejected(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    # Two writes of one key in one branch are refused before any compare is evaluated, even in
    # the branch that would not run (contract X14); nothing is written.
    before = current_rev(etcdctl, prefix)
    result = txn(etcdctl, [], [f"put {key} a"], [f"put {key} b", f"del {key}"], check=False)
    assert_fails_with(result, "InvalidArgument", "etcdserver: duplicate key given in txn request")
    assert current_rev(etcdctl, prefix) == before


# ---------------------------------------------------------------------------------------------
# compaction


def test_compaction_then_read_below_it_fails(etcdctl: Etcdctl, prefix: str) -> None:
    key = prefix + "k"
    r1 = put_rev(etcdctl, key, "1")
    r2 = put_rev(etcdctl, key, "2")
    r3 = put_rev(etcdctl, key, "3")
    assert etcdctl("compaction", str(r2)).stdout == f"compacted revision {r2}\n"

    assert_fails_with(etcdctl("get", key, f"--rev={r1}", check=False), "OutOfRange", COMPACTED)
    # The compaction revision itself is still readable.
    assert etcdctl("get", key, f"--rev={r2}").lines == [key, "2"]
    assert etcdctl("get", key, f"--rev={r3}").lines == [key, "3"]
    assert etcdctl("get", key).lines == [key, "3"]
    # Compacting again at or below the compacted revision is an error, as is a future one.
    assert_fails_with(etcdctl("compaction", str(r1), check=False), "OutOfRange", COMPACTED)
    assert_fails_with(etcdctl("compaction", str(r3 + 1000), check=False), "OutOfRange", FUTURE_REV)


# ---------------------------------------------------------------------------------------------
# TLS and mutual TLS


def test_tls_put_get(tls_target: Server, etcdctl_for: Callable[..., Etcdctl], prefix: str) -> None:
    ctl = etcdctl_for(tls_target)
    assert tls_target.client_url.startswith("https://")
    key = prefix + "k"
    assert ctl("put", key, "secure").stdout == "OK\n"
    assert ctl("get", key).lines == [key, "secure"]
    doc = normalized(ctl("get", key, "-w", "json").json())
    assert doc["kvs"][0]["value"] == b64("secure")


def test_tls_untrusted_server_is_refused_by_client(
    tls_target: Server, etcdctl_for: Callable[..., Etcdctl], prefix: str
) -> None:
    # Without --cacert the client does not trust the test CA: the handshake must fail, which
    # proves the server really speaks TLS with the certificate it was given.
    ctl = etcdctl_for(tls_target, cacert=False, dial_timeout="1s", command_timeout="2s")
    result = ctl("put", prefix + "k", "v", check=False)
    assert result.rc != 0, str(result)


def test_mtls_with_client_cert(
    mtls_target: Server, etcdctl_for: Callable[..., Etcdctl], prefix: str
) -> None:
    ctl = etcdctl_for(mtls_target)  # presents the client certificate
    key = prefix + "k"
    assert ctl("put", key, "mutual").stdout == "OK\n"
    assert ctl("get", key).lines == [key, "mutual"]


def test_mtls_without_client_cert_is_refused(
    mtls_target: Server, etcdctl_for: Callable[..., Etcdctl], prefix: str
) -> None:
    with_cert = etcdctl_for(mtls_target)
    key = prefix + "k"
    with_cert("put", key, "before")
    no_cert = etcdctl_for(mtls_target, client_cert=False, dial_timeout="1s", command_timeout="2s")
    refused = no_cert("put", key, "intruder", check=False)
    assert refused.rc != 0, str(refused)
    assert no_cert("get", key, check=False).rc != 0
    # The refused write did not happen.
    assert with_cert("get", key).lines == [key, "before"]
