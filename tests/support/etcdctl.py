"""Run Debian's etcdctl (v3 API) against a test server, as a user would type it."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from .procs import Server, clean_env

DEFAULT_TIMEOUT = 20.0


def etcdctl_binary() -> str | None:
    return shutil.which("etcdctl")


@dataclass(frozen=True)
class CtlResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stdout split into lines (etcdctl's simple output: key, value, key, value, ...)."""
        return self.stdout.splitlines()

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n"
            f"exit status {self.rc}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


class CtlError(AssertionError):
    def __init__(self, result: CtlResult) -> None:
        super().__init__(f"etcdctl failed:\n{result}")
        self.result = result


class Etcdctl:
    """``etcdctl --endpoints=<server>`` with ETCDCTL_API=3 and the server's TLS material.

    ``cacert``: pass the test CA when the server uses TLS. ``client_cert``: present the test client
    certificate; None means "when the server requires one" (``--client-cert-auth``).

    Calling it runs one command::

        ctl = Etcdctl(server)
        ctl("put", "k", "v")                          # raises CtlError unless exit status is 0
        r = ctl("get", "k", "--rev=1", check=False)   # r.rc, r.stdout, r.stderr
        ctl("txn", "-i", input="...")                 # interactive txn reads stdin
    """

    def __init__(
        self,
        server: Server,
        *,
        cacert: bool = True,
        client_cert: bool | None = None,
        dial_timeout: str = "3s",
        command_timeout: str = "8s",
        binary: str | None = None,
    ) -> None:
        found = binary or etcdctl_binary()
        if found is None:
            raise FileNotFoundError("etcdctl not found on PATH (apt-get install etcd-client)")
        self.binary = found
        self.server = server
        self.global_flags = [
            f"--endpoints={server.client_url}",
            f"--dial-timeout={dial_timeout}",
            f"--command-timeout={command_timeout}",
        ]
        if server.tls is not None:
            if cacert:
                self.global_flags.append(f"--cacert={server.tls.ca}")
            if client_cert is None:
                client_cert = server.client_cert_auth
            if client_cert:
                self.global_flags += [
                    f"--cert={server.tls.client_cert}",
                    f"--key={server.tls.client_key}",
                ]

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CtlResult:
        argv = (self.binary, *self.global_flags, *args)
        proc = subprocess.run(
            argv,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(ETCDCTL_API="3"),
        )
        result = CtlResult(argv=argv, rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        if check and result.rc != 0:
            raise CtlError(result)
        return result
