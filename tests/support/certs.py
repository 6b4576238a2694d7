"""TLS material for tests: one trustme CA, a server certificate and a client certificate, as files.

etcd, etcdgw and etcdctl all take PEM *paths*, so everything is written into one directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """PEM files; ``client_*`` is a certificate signed by the same CA, usable for mutual TLS."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def read_ca(self) -> bytes:
        return self.ca.read_bytes()


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    trustme's leaf certificates carry both serverAuth and clientAuth extended key usages, which
    etcd checks for on client certificates under ``--client-cert-auth``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="etcdgw tests")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="etcdgw-test-server")
    client = ca.issue_cert("client.etcdgw.test", common_name="etcdgw-test-client")

    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    # The chain (leaf + CA) is what servers should present.
    server.private_key_pem.write_to_path(str(files.server_key))
    _write_chain(server, files.server_cert)
    client.private_key_pem.write_to_path(str(files.client_key))
    _write_chain(client, files.client_cert)
    for key in (files.server_key, files.client_key):
        key.chmod(0o600)
    return files


def _write_chain(leaf: trustme.LeafCert, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
