"""Concurrency recipes on leases (contract O05): ``etcdctl lock`` and ``etcdctl elect``.

Both recipes are a session (LeaseGrant + KeepAlive stream, Revoke on close), a key created under
the session's lease with CREATE == 0, a Range sorted by create revision and a Watch for the
DELETE of the previous holder's key. Two contenders run as real etcdctl processes; the second
must get the lock (or leadership) only once the first one's session has ended, by a clean exit
(revoke) or by the lease's expiry after the first was killed.

Output lines are read by a thread into a queue and awaited with a deadline; the only fixed waits
check that nothing happens (the second contender stays blocked while the first holds on).
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from support.etcdctl import Etcdctl
from support.procs import clean_env

pytestmark = pytest.mark.etcd

#: How long a contender may take to print what it should (process start, dial, grant, txn).
LINE_WAIT = 20.0
#: How long a blocked contender must stay silent while the first one holds on.
BLOCKED_FOR = 1.5


class Contender:
    """One long-running etcdctl process whose stdout lines arrive in a queue."""

    def __init__(self, ctl: Etcdctl, *args: str) -> None:
        self.argv = (ctl.binary, *ctl.global_flags, *args)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(ETCDCTL_API="3"),
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = LINE_WAIT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.argv}: no output within {timeout} s") from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"{self.argv}: exited with {self.proc.wait()}: {self.stderr()}")
        return line

    def expect_silence(self, duration: float = BLOCKED_FOR) -> None:
        try:
            line = self._lines.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"{self.argv}: expected to stay blocked, printed {line!r}")

    def interrupt(self) -> int:
        """Ctrl-C: etcdctl releases (unlock/resign), closes its session (revoke) and exits."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=LINE_WAIT)

    def kill(self) -> None:
        """SIGKILL: no revoke; the session's lease must expire."""
        self.proc.kill()
        self.proc.wait(timeout=LINE_WAIT)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def contenders(etcdctl: Etcdctl) -> Iterator[list[Contender]]:
    started: list[Contender] = []
    yield started
    for c in started:
        c.stop()


def start(started: list[Contender], ctl: Etcdctl, *args: str) -> Contender:
    c = Contender(ctl, *args)
    started.append(c)
    return c


def test_lock_waits_for_the_holders_session(
    etcdctl: Etcdctl, contenders: list[Contender], prefix: str
) -> None:
    name = prefix + "lock"
    first = start(contenders, etcdctl, "lock", name)
    first_key = first.line()
    assert first_key.startswith(name + "/")
    second = start(contenders, etcdctl, "lock", name)
    second.expect_silence()
    # Both contenders' keys exist; the lock is the one with the lowest create revision.
    held = etcdctl("get", "--prefix", "--keys-only", name + "/").stdout.split()
    assert first_key in held and len(held) == 2

    assert first.interrupt() == 0
    second_key = second.line()
    assert second_key.startswith(name + "/") and second_key != first_key
    assert etcdctl("get", "--prefix", "--keys-only", name + "/").stdout.split() == [second_key]
    assert second.interrupt() == 0
    assert etcdctl("get", "--prefix", name + "/").stdout == ""


def test_lock_passes_on_when_the_holder_dies(
    etcdctl: Etcdctl, contenders: list[Contender], prefix: str
) -> None:
    name = prefix + "lock"
    first = start(contenders, etcdctl, "lock", "--ttl=2", name)
    first_key = first.line()
    second = start(contenders, etcdctl, "lock", "--ttl=2", name)
    second.expect_silence()
    first.kill()  # no revoke: the session's 2 s lease has to expire
    killed = time.monotonic()
    second_key = second.line()
    assert second_key != first_key
    # The first session's last keepalive was at most TTL/3 before the kill (L11), so its lease
    # cannot have expired earlier than 2 s - 2/3 s after it (L16: never early).
    assert time.monotonic() - killed >= 2 - 2 / 3 - 0.1
    assert etcdctl("get", "--prefix", "--keys-only", name + "/").stdout.split() == [second_key]
    assert second.interrupt() == 0


def test_elect_second_candidate_leads_after_the_first_resigns(
    etcdctl: Etcdctl, contenders: list[Contender], prefix: str
) -> None:
    name = prefix + "election"
    first = start(contenders, etcdctl, "elect", name, "proposal-one")
    first_key = first.line()
    assert first_key.startswith(name + "/")
    assert first.line() == "proposal-one"
    observer = start(contenders, etcdctl, "elect", "--listen", name)
    assert (observer.line(), observer.line()) == (first_key, "proposal-one")

    second = start(contenders, etcdctl, "elect", name, "proposal-two")
    second.expect_silence()
    assert first.interrupt() == 0
    second_key = second.line()
    assert second_key.startswith(name + "/") and second_key != first_key
    assert second.line() == "proposal-two"
    assert (observer.line(), observer.line()) == (second_key, "proposal-two")
    assert second.interrupt() == 0
