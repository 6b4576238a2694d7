"""The README's promises, run as written: the embedding example and the documented commands."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.procs import REPO_ROOT, clean_env

README = REPO_ROOT / "README.md"


def _embedding_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- embedding-example:")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, marker)
    assert match is not None, "README lost its embedding example"
    return match.group(1)


def _etcdctl(url: str, *args: str) -> str:
    etcdctl = shutil.which("etcdctl")
    assert etcdctl is not None, "etcdctl is installed by .ci/run"
    done = subprocess.run(
        [etcdctl, "--endpoints", url, *args],
        env=clean_env(ETCDCTL_API="3"),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout


def test_embedding_example_serves_etcd_clients(tmp_path: Path, monkeypatch: Any) -> None:
    """Run the README block as is, in a fresh process-like namespace, with ``run_my_app``
    played by etcdctl: what a user's app would do with the URL."""
    monkeypatch.chdir(tmp_path)
    seen: list[str] = []

    async def run_my_app(url: str) -> None:
        def talk() -> None:
            _etcdctl(url, "put", "greeting", "hello")
            seen.append(_etcdctl(url, "get", "greeting", "--print-value-only").strip())

        await asyncio.to_thread(talk)

    namespace: dict[str, Any] = {"run_my_app": run_my_app, "__name__": "__readme__"}
    exec(compile(_embedding_example(), str(README), "exec"), namespace)
    assert seen == ["hello"]
    assert (tmp_path / "my-app.etcdgw").is_dir(), "the example's data dir"


@pytest.mark.parametrize("command", ["make run", "make test"])
def test_readme_names_the_two_commands(command: str) -> None:
    text = README.read_text()
    assert f"\n{command}\n" in text
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(rf"^{command.split()[1]}:", makefile, re.M)
