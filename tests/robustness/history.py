"""What a robustness run records: operations, watch streams, and the log read at the end.

Times are one monotonic clock of the test process. An operation whose ``complete`` is None is
*unknown*: the client gave up (timeout, broken connection), so it may have taken effect at any
time after ``invoke``, or never. ``failed`` marks an error that guarantees it did not happen.
Values are unique per run, so a value names the one write that made it.

A history is saved as JSON when a run fails (bytes as latin-1 strings, to stay readable) and
can be loaded again to re-run the checks on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["History", "Op", "WatchEvent", "WatchLog"]


@dataclass
class Op:
    client: int
    gateway: int
    #: put | get | delete | cas
    kind: str
    key: bytes
    #: put, cas: the value written
    value: bytes | None
    #: cas: the value compared against (None: the key must be absent)
    expect: bytes | None
    #: cas by mod revision: the mod revision compared against (0: absent); None for cas by value
    expect_rev: int | None
    #: get: serializable (may be stale, never older than an earlier one on the same gateway)
    serializable: bool
    invoke: float
    complete: float | None
    failed: bool
    #: cas: succeeded; delete: deleted something; get, put: True
    ok: bool
    #: get: the value read (None: absent) and its mod revision (0: absent)
    read: bytes | None
    read_mod_rev: int
    #: the response header's revision (0 when there was no response)
    revision: int

    @property
    def unknown(self) -> bool:
        return self.complete is None and not self.failed

    @property
    def done(self) -> bool:
        """Answered: the result is known."""
        return self.complete is not None and not self.failed

    @property
    def writes(self) -> bool:
        """The kind of operation that can change the key."""
        return self.kind in ("put", "delete", "cas")

    def describe(self) -> str:
        what = {
            "put": f"put {_s(self.key)}={_s(self.value)}",
            "get": f"{'serializable ' if self.serializable else ''}get {_s(self.key)}"
                   f" -> {_s(self.read)}@{self.read_mod_rev}",
            "delete": f"delete {_s(self.key)} -> {'deleted' if self.ok else 'nothing'}",
            "cas": f"cas {_s(self.key)}: "
                   + (f"mod=={self.expect_rev}" if self.expect_rev is not None
                      else f"value=={_s(self.expect)}")
                   + f" then {_s(self.value)} -> {'succeeded' if self.ok else 'failed'}",
        }[self.kind]
        end = "unknown" if self.unknown else "failed" if self.failed else f"{self.complete:.3f}"
        return (f"[client {self.client} gw {self.gateway} {self.invoke:.3f}..{end} "
                f"rev {self.revision}] {what}")


@dataclass(frozen=True)
class WatchEvent:
    rev: int
    key: bytes
    #: None: a delete
    value: bytes | None
    mod_rev: int


@dataclass
class WatchLog:
    watcher: int
    gateway: int
    start_rev: int
    events: list[WatchEvent]
    #: every re-dial after a break: (the start revision asked for, len(events) at that moment)
    resumes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class History:
    ops: list[Op]
    watches: list[WatchLog]
    #: the log's revision at the end, through every gateway
    final_rev: int
    #: revision -> the events at that revision, read by a fresh watch after the run
    log: dict[int, list[WatchEvent]]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(_encode(asdict(self)), indent=1))

    @classmethod
    def load(cls, path: Path) -> History:
        raw = json.loads(path.read_text())
        ops = [Op(**_decode_op(o)) for o in raw["ops"]]
        watches = [WatchLog(watcher=w["watcher"], gateway=w["gateway"], start_rev=w["start_rev"],
                            events=[_event(e) for e in w["events"]],
                            resumes=[(int(a), int(b)) for a, b in w["resumes"]])
                   for w in raw["watches"]]
        log = {int(rev): [_event(e) for e in evs] for rev, evs in raw["log"].items()}
        return cls(ops=ops, watches=watches, final_rev=raw["final_rev"], log=log)


def _s(b: bytes | None) -> str:
    return "<absent>" if b is None else b.decode("latin-1")


def _encode(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"b": x.decode("latin-1")}
    if isinstance(x, dict):
        return {str(k): _encode(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_encode(v) for v in x]
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, dict) and set(x) == {"b"}:
        return x["b"].encode("latin-1")
    return x


def _decode_op(o: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode(v) for k, v in o.items()}


def _event(e: dict[str, Any]) -> WatchEvent:
    return WatchEvent(rev=e["rev"], key=_decode(e["key"]), value=_decode(e["value"]),
                      mod_rev=e["mod_rev"])
