"""The committed generated code must match a fresh build from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "etcdgw._protogen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (
        "etcdgw/_proto is stale or could not be generated; run `make proto`\n"
        + result.stdout
        + result.stderr
    )
