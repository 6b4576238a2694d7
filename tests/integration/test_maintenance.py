"""Maintenance and cluster operations as an operator runs them with etcdctl, on etcd and etcdgw.

Contract MT01-MT10, CL03, L17, O02-O04, T20/HT01-HT04. Every test that can runs on both targets
("etcd" is Debian's 3.4: where its answers differ from the newer etcd the contract describes, the
test says so). Tests that would break a shared etcd (member add, a tiny quota) use servers of
their own from ``server_factory``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.etcdctl import CtlResult, Etcdctl
from support.procs import REPO_ROOT, Server, clean_env

NO_SPACE = "etcdserver: mvcc: database space exceeded"
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
SEMVER = re.compile(r"^3\.\d+\.\d+$")


def error_of(result: CtlResult) -> str:
    assert result.rc != 0, f"expected etcdctl to fail:\n{result}"
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert lines, f"no 'Error:' line:\n{result}"
    return lines[-1][len("Error: ") :]


def assert_fails_with(result: CtlResult, grpc_code: str, message: str) -> None:
    assert error_of(result) == message, str(result)
    assert f"code = {grpc_code} desc = {message}" in result.stderr, str(result)


def put_rev(ctl: Etcdctl, key: str, value: str) -> int:
    rev: int = ctl("put", key, value, "-w", "json").json()["header"]["revision"]
    return rev


def status(ctl: Etcdctl) -> dict[str, Any]:
    doc: dict[str, Any] = ctl("endpoint", "status", "-w", "json").json()[0]["Status"]
    return doc


def hashkv(ctl: Etcdctl, *flags: str) -> dict[str, Any]:
    doc: dict[str, Any] = ctl("endpoint", "hashkv", "-w", "json", *flags).json()[0]["HashKV"]
    return doc


def http_get(
    server: Server, path: str, *, method: str = "GET", context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request to the server's client port (the gRPC port)."""
    conn: http.client.HTTPConnection
    if server.tls is not None:
        conn = http.client.HTTPSConnection(server.host, server.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# endpoint status / health / hashkv, member list, alarms


def test_endpoint_status_fields(etcdctl: Etcdctl, prefix: str) -> None:
    rev = put_rev(etcdctl, prefix + "k", "v")
    doc = status(etcdctl)
    header = doc["header"]
    # The same fields as etcd prints (zero values omitted by etcdctl's JSON printer).
    assert set(doc) == {
        "header", "version", "dbSize", "leader", "raftIndex", "raftTerm", "raftAppliedIndex",
        "dbSizeInUse",
    }  # fmt: skip
    assert SEMVER.match(doc["version"])
    assert header["revision"] >= rev
    assert doc["dbSize"] > 0
    assert 0 < doc["dbSizeInUse"] <= doc["dbSize"]
    assert doc["leader"] == header["member_id"] != 0
    assert doc["raftTerm"] == header["raft_term"] >= 1
    assert doc["raftIndex"] >= doc["raftAppliedIndex"] >= 1
    # Both indexes never go backwards and move with writes.
    put_rev(etcdctl, prefix + "k", "v2")
    after = status(etcdctl)
    assert after["raftIndex"] > doc["raftIndex"]
    assert after["raftAppliedIndex"] > doc["raftAppliedIndex"]


def test_endpoint_status_table(etcdctl: Etcdctl, target: Server) -> None:
    out = etcdctl("endpoint", "status", "-w", "table").stdout
    row = next(line for line in out.splitlines() if target.client_url in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, (IS LEARNER,) RAFT TERM, ...
    assert cells[0] == target.client_url
    assert "true" in cells  # IS LEADER


def test_endpoint_status_version_is_3_5_on_etcdgw(
    etcdgw_server: Server, etcdctl_for: Any
) -> None:
    assert status(etcdctl_for(etcdgw_server))["version"] == "3.5.17"
    _, _, body = http_get(etcdgw_server, "/version")
    assert json.loads(body)["etcdserver"] == "3.5.17"  # HT03: agrees with Status


def test_endpoint_health(etcdctl: Etcdctl, target: Server) -> None:
    out = etcdctl("endpoint", "health").stderr + etcdctl("endpoint", "health").stdout
    assert f"{target.client_url} is healthy" in out
    doc = etcdctl("endpoint", "health", "-w", "json").json()
    assert doc[0]["health"] is True and doc[0]["endpoint"] == target.client_url


def test_endpoint_hashkv(etcdctl: Etcdctl, prefix: str) -> None:
    rev = put_rev(etcdctl, prefix + "k", "v")
    first = hashkv(etcdctl, f"--rev={rev}")
    assert isinstance(first["hash"], int) and 0 <= first["hash"] < 2**32
    assert first["header"]["revision"] >= rev
    assert isinstance(first.get("compact_revision", 0), int)
    # Deterministic: the same revision hashes the same, also after later writes.
    put_rev(etcdctl, prefix + "k", "v2")
    again = hashkv(etcdctl, f"--rev={rev}")
    assert again["hash"] == first["hash"]
    # A different history gives a different hash.
    assert hashkv(etcdctl)["hash"] != first["hash"]


def test_endpoint_hashkv_future_revision_fails(etcdctl: Etcdctl, prefix: str) -> None:
    rev = put_rev(etcdctl, prefix + "k", "v")
    result = etcdctl("endpoint", "hashkv", f"--rev={rev + 1000}", check=False)
    assert result.rc != 0
    assert FUTURE_REV in result.stderr + result.stdout


def test_member_list(etcdctl: Etcdctl, target: Server) -> None:
    doc = etcdctl("member", "list", "-w", "json").json()
    assert len(doc["members"]) == 1
    member = doc["members"][0]
    assert member["ID"] == doc["header"]["member_id"]
    assert member["clientURLs"] == [target.client_url]
    table = etcdctl("member", "list").stdout
    assert f"{member['ID']:x}, started, " in table


def test_alarm_list_and_disarm_when_none(etcdctl: Etcdctl) -> None:
    assert etcdctl("alarm", "list").stdout == ""
    assert etcdctl("alarm", "disarm").stdout == ""


def test_defrag(etcdctl: Etcdctl, target: Server, prefix: str) -> None:
    for i in range(20):
        put_rev(etcdctl, f"{prefix}k{i % 3}", "x" * 2000)
    result = etcdctl("defrag")
    assert f"Finished defragmenting etcd member[{target.client_url}]" in result.stdout
    etcdctl("put", prefix + "after", "ok")
    assert etcdctl("get", prefix + "after").lines == [prefix + "after", "ok"]


def test_compaction_physical(etcdctl: Etcdctl, prefix: str) -> None:
    old = put_rev(etcdctl, prefix + "k", "1")
    rev = put_rev(etcdctl, prefix + "k", "2")
    assert etcdctl("compaction", "--physical", str(rev)).stdout == f"compacted revision {rev}\n"
    result = etcdctl("get", prefix + "k", f"--rev={old}", check=False)
    assert_fails_with(result, "OutOfRange", COMPACTED)
    assert etcdctl("get", prefix + "k").lines == [prefix + "k", "2"]
    # HashKV below the compaction point fails like a Range (R04).
    result = etcdctl("endpoint", "hashkv", f"--rev={old}", check=False)
    assert result.rc != 0 and COMPACTED in result.stderr + result.stdout
    assert hashkv(etcdctl)["compact_revision"] == rev


# ---------------------------------------------------------------------------------------------
# membership changes and leadership: refused by etcdgw (fixed membership)


def test_member_changes_are_refused_by_etcdgw(etcdgw_server: Server, etcdctl_for: Any) -> None:
    ctl = etcdctl_for(etcdgw_server)
    member_id = ctl("member", "list", "-w", "json").json()["header"]["member_id"]
    result = ctl("member", "add", "other", "--peer-urls=http://10.0.0.2:2380", check=False)
    assert_fails_with(result, "FailedPrecondition", "etcdserver: not capable")
    result = ctl("member", "remove", "1234", check=False)
    assert_fails_with(result, "NotFound", "etcdserver: member not found")
    result = ctl("member", "remove", f"{member_id:x}", check=False)
    assert_fails_with(result, "FailedPrecondition", "etcdserver: not capable")
    result = ctl("member", "update", f"{member_id:x}", "--peer-urls=http://x:2380", check=False)
    assert_fails_with(result, "FailedPrecondition", "etcdserver: not capable")
    result = ctl("member", "promote", f"{member_id:x}", check=False)
    assert_fails_with(
        result, "FailedPrecondition", "etcdserver: can only promote a learner member"
    )
    # Nothing changed.
    assert len(ctl("member", "list", "-w", "json").json()["members"]) == 1


def test_move_leader(etcdgw_server: Server, etcdctl_for: Any) -> None:
    ctl = etcdctl_for(etcdgw_server)
    result = ctl("move-leader", "1234", check=False)
    assert_fails_with(result, "FailedPrecondition", "etcdserver: bad leader transferee")


# ---------------------------------------------------------------------------------------------
# snapshot save (both) and restore (etcdgw)


def test_snapshot_save(etcdctl: Etcdctl, prefix: str, tmp_path: Path) -> None:
    put_rev(etcdctl, prefix + "k", "v")
    path = tmp_path / "snap.db"
    result = etcdctl("snapshot", "save", str(path))
    assert f"Snapshot saved at {path}" in result.stdout
    data = path.read_bytes()
    assert len(data) % 512 == 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]


def test_snapshot_save_restore_serve(
    etcdgw_server: Server,
    etcdctl_for: Any,
    server_factory: Callable[..., Server],
    prefix: str,
    tmp_path: Path,
) -> None:
    ctl = etcdctl_for(etcdgw_server)
    for i in range(30):
        ctl("put", f"{prefix}k{i % 7}", f"value-{i}")
    ctl("del", f"{prefix}k3")
    snap = tmp_path / "snap.db"
    ctl("snapshot", "save", str(snap))
    # Everything at or below the snapshot's revision, as read before the restore.
    before = ctl("get", prefix, "--prefix", "-w", "json").json()
    rev = before["header"]["revision"]
    history = ctl("get", prefix, "--prefix", f"--rev={rev - 5}", "-w", "json").json()

    data_dir = tmp_path / "restored"
    proc = subprocess.run(
        [sys.executable, "-m", "etcdgw", "snapshot", "restore", str(snap),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env=clean_env(PYTHONPATH=str(REPO_ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Restoring over a data dir that exists is refused.
    again = subprocess.run(
        [sys.executable, "-m", "etcdgw", "snapshot", "restore", str(snap),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env=clean_env(PYTHONPATH=str(REPO_ROOT)),
    )  # fmt: skip
    assert again.returncode == 1 and "not empty" in again.stderr

    restored = server_factory("etcdgw", extra_args=("--data-dir", str(data_dir)))
    rctl = etcdctl_for(restored)
    after = rctl("get", prefix, "--prefix", "-w", "json").json()
    assert after["kvs"] == before["kvs"]
    assert after["header"]["revision"] == rev
    assert rctl("get", prefix, "--prefix", f"--rev={rev - 5}", "-w", "json").json()["kvs"] == (
        history["kvs"]
    )
    # Like a restored etcd member: a new cluster (and member) id.
    assert after["header"]["cluster_id"] != before["header"]["cluster_id"]
    assert hashkv(rctl, f"--rev={rev}")["hash"] == hashkv(ctl, f"--rev={rev}")["hash"]
    # And it takes writes.
    assert put_rev(rctl, prefix + "new", "x") == rev + 1


def test_restore_rejects_a_damaged_snapshot(tmp_path: Path) -> None:
    snap = tmp_path / "bad.db"
    snap.write_bytes(b"\0" * 512 + b"\1" * 32)
    proc = subprocess.run(
        [sys.executable, "-m", "etcdgw", "snapshot", "restore", str(snap),
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env=clean_env(PYTHONPATH=str(REPO_ROOT)),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "SHA-256 mismatch" in proc.stderr
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# the space quota: NOSPACE end to end (L17, MT05, MT06)

QUOTA = 256 * 1024


@pytest.mark.parametrize("kind", ["etcd", "etcdgw"])
def test_nospace_alarm_end_to_end(
    kind: str, server_factory: Callable[..., Server], etcdctl_for: Any, tmp_path: Path
) -> None:
    server = server_factory(kind, extra_args=("--quota-backend-bytes", str(QUOTA)))
    ctl = etcdctl_for(server)
    value = "x" * 16 * 1024
    for i in range(200):
        result = ctl("put", f"/fill/{i:04d}", value, check=False)
        if result.rc != 0:
            assert_fails_with(result, "ResourceExhausted", NO_SPACE)
            break
    else:
        pytest.fail(f"{kind}: no NOSPACE after 200 puts of 16 KiB with a 256 KiB quota")

    member_id = ctl("member", "list", "-w", "json").json()["header"]["member_id"]
    assert ctl("alarm", "list").stdout == f"memberID:{member_id} alarm:NOSPACE \n"
    assert any("alarm:NOSPACE" in e for e in status(ctl).get("errors", []))
    # (etcdctl 3.5+ `endpoint health` also lists alarms and reports this member unhealthy;
    # Debian's etcdctl 3.4 only runs its Range, so it is not asserted here. /health is.)
    code, _, body = http_get(server, "/health")
    assert code == 503 and json.loads(body)["health"] == "false"
    if kind == "etcdgw":  # etcd 3.4 answers {"health":"false"} without a reason
        assert json.loads(body)["reason"] == "ALARM NOSPACE"
    code, _, body = http_get(server, "/health?exclude=NOSPACE")
    assert code == 200 and json.loads(body)["health"] == "true"

    # Writes that grow the store fail, even a small one.
    assert_fails_with(ctl("put", "/small", "1", check=False), "ResourceExhausted", NO_SPACE)
    txn_put = ctl("txn", "-i", input="\nput /t 1\n\n\n", check=False)
    assert_fails_with(txn_put, "ResourceExhausted", NO_SPACE)
    lease = ctl("lease", "grant", "60", check=False)
    assert error_of(lease) == f"failed to grant lease ({NO_SPACE})"
    assert f"code = ResourceExhausted desc = {NO_SPACE}" in lease.stderr
    # Reads, deletes, txns without puts and compaction still work.
    assert ctl("get", "/fill/0000", "--print-value-only").stdout == value + "\n"
    assert "SUCCESS" in ctl("txn", "-i", input="\ndel /fill/0000\n\n\n").stdout
    deleted = ctl("del", "/fill/", "--prefix", "-w", "json").json()
    rev = deleted["header"]["revision"]
    ctl("compaction", "--physical", str(rev))
    ctl("defrag")
    # Still armed until disarmed, however much space there is now.
    assert_fails_with(ctl("put", "/small", "1", check=False), "ResourceExhausted", NO_SPACE)
    assert ctl("alarm", "disarm").stdout == f"memberID:{member_id} alarm:NOSPACE \n"
    assert ctl("alarm", "list").stdout == ""
    ctl("put", "/small", "1")
    assert ctl("get", "/small", "--print-value-only").stdout == "1\n"
    assert "is healthy" in ctl("endpoint", "health").stdout + ctl("endpoint", "health").stderr


# ---------------------------------------------------------------------------------------------
# HTTP on the client port (T20, HT01-HT04)


def test_http_health_and_version(target: Server) -> None:
    code, _, body = http_get(target, "/health")
    assert code == 200
    assert json.loads(body)["health"] == "true"
    code, _, body = http_get(target, "/health?serializable=true")
    assert code == 200 and json.loads(body)["health"] == "true"
    code, _, body = http_get(target, "/version")
    assert code == 200
    doc = json.loads(body)
    assert SEMVER.match(doc["etcdserver"])
    assert re.match(r"^3\.\d+\.0$", doc["etcdcluster"])


def test_http_method_not_allowed_and_not_found(target: Server) -> None:
    code, headers, _ = http_get(target, "/health", method="POST")
    assert code == 405 and headers["allow"] == "GET"
    code, _, _ = http_get(target, "/no-such-page")
    assert code == 404


def test_http_metrics_parse(target: Server, etcdctl: Etcdctl, prefix: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    etcdctl("put", prefix + "k", "v")
    etcdctl("get", prefix + "k")
    code, headers, body = http_get(target, "/metrics")
    assert code == 200
    assert headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["etcd_server_has_leader"].samples[0].value == 1
    assert families["etcd_mvcc_db_total_size_in_bytes"].samples[0].value > 0
    handled = [
        s for s in families["grpc_server_handled"].samples
        if s.labels.get("grpc_method") == "Range" and s.labels.get("grpc_code") == "OK"
    ]  # fmt: skip
    assert handled and handled[0].value >= 1
    assert handled[0].labels["grpc_service"] == "etcdserverpb.KV"


def test_http_metrics_etcdgw_details(etcdgw_server: Server, etcdctl_for: Any, prefix: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ctl = etcdctl_for(etcdgw_server)
    rev = put_rev(ctl, prefix + "k", "v")
    _, _, body = http_get(etcdgw_server, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["etcd_debugging_mvcc_current_revision"].samples[0].value >= rev
    assert families["etcd_server_quota_backend_bytes"].samples[0].value == 2 * 1024**3
    assert "etcd_debugging_mvcc_watcher_total" in families
    assert "etcdgw_leases" in families
    batches = families["etcdgw_store_commit_batch_requests"]
    count = next(s for s in batches.samples if s.name.endswith("_count"))
    assert count.value >= 1
    latency = families["grpc_server_handling_seconds"]
    assert any(s.labels.get("grpc_method") == "Put" for s in latency.samples)


def test_http_livez_readyz(etcdgw_server: Server) -> None:
    # etcd 3.5.11+ endpoints; Debian's etcd 3.4 does not have them (etcdgw only).
    for path in ("/livez", "/readyz"):
        code, _, body = http_get(etcdgw_server, path)
        assert (code, body) == (200, b"ok\n")
    code, _, body = http_get(etcdgw_server, "/readyz?verbose")
    assert code == 200
    assert body.decode().splitlines() == [
        "[+]data_corruption ok",
        "[+]serializable_read ok",
        "[+]linearizable_read ok",
        "[+]non_learner ok",
        "readyz check passed",
    ]
    code, _, body = http_get(etcdgw_server, "/livez?verbose&exclude=serializable_read")
    assert body.decode().splitlines() == [
        "[+]serializable_read excluded: ok",
        "livez check passed",
    ]
    code, _, body = http_get(etcdgw_server, "/readyz/linearizable_read")
    assert (code, body) == (200, b"ok\n")
    assert http_get(etcdgw_server, "/readyz/nonsense")[0] == 404
    assert http_get(etcdgw_server, "/livez", method="PUT")[0] == 405


@pytest.mark.parametrize("alpn", [None, "http/1.1"])
def test_http_over_tls(tls_target: Server, alpn: str | None) -> None:
    context = ssl.create_default_context(cafile=str(tls_target.tls.ca) if tls_target.tls else None)
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    code, _, body = http_get(tls_target, "/health", context=context)
    assert code == 200 and json.loads(body)["health"] == "true"


def test_metrics_listener(server_factory: Callable[..., Server], etcdctl_for: Any) -> None:
    from support.procs import free_port

    port = free_port()
    server = server_factory("etcdgw", extra_args=("--listen-metrics-urls", f"http://127.0.0.1:{port}"))
    etcdctl_for(server)("put", "k", "v")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert b"etcd_server_has_leader 1" in response.read()
        conn.request("GET", "/health")
        response = conn.getresponse()  # same connection: keep-alive
        assert response.status == 200 and json.loads(response.read())["health"] == "true"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# auto compaction


def test_periodic_auto_compaction(
    server_factory: Callable[..., Server], etcdctl_for: Any
) -> None:
    server = server_factory(
        "etcdgw",
        extra_args=("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"),
    )
    ctl = etcdctl_for(server)
    first = put_rev(ctl, "/ac/k", "1")
    put_rev(ctl, "/ac/k", "2")
    deadline = time.monotonic() + 15
    while True:
        result = ctl("get", "/ac/k", f"--rev={first}", check=False)
        if result.rc != 0:
            assert_fails_with(result, "OutOfRange", COMPACTED)
            break
        assert time.monotonic() < deadline, "no auto compaction within 15 s (retention 1s)"
        put_rev(ctl, "/ac/other", "x")
        time.sleep(0.5)
    assert ctl("get", "/ac/k", "--print-value-only").stdout == "2\n"
    assert os.path.isdir(server.data_dir)
