"""The etcd v3 messages for the load generator, compiled from ``proto/`` on first use.

``grpc_tools.protoc`` turns our own ``.proto`` files into google.protobuf modules (the C "upb"
implementation: encoding a 500-key RangeResponse takes well under a millisecond, so the client is
not what is measured). The output lands in ``bench/.gen/<digest>/``, keyed by the content of the
``.proto`` files and the protobuf version, so an edit of ``proto/`` recompiles and nothing stale is
ever imported. Compilation writes to a temporary directory renamed into place: several client
processes starting at once never see a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = Path(__file__).resolve().parent / ".gen"
FILES = ("mvccpb/kv.proto", "authpb/auth.proto", "etcdserverpb/rpc.proto")


def _digest() -> str:
    import google.protobuf

    h = hashlib.sha256(google.protobuf.__version__.encode())
    for name in FILES:
        h.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _compile(out: Path) -> None:
    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    GEN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=GEN_DIR))
    try:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            *FILES,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"protoc failed ({' '.join(cmd)}):\n{proc.stderr}")
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():  # another process won the race: fine; anything else: raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> tuple[ModuleType, ModuleType]:
    """``(rpc_pb2, kv_pb2)``: etcdserverpb and mvccpb message modules."""
    out = GEN_DIR / _digest()
    if not out.is_dir():
        _compile(out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    rpc = importlib.import_module("etcdserverpb.rpc_pb2")
    kv = importlib.import_module("mvccpb.kv_pb2")
    return rpc, kv


rpc_pb2, kv_pb2 = load()
