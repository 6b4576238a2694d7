"""Durable, ordered revision logs. Placeholder until the embedded backend lands."""

from __future__ import annotations

from typing import Any


async def open_backend(kind: str, data_dir: str) -> Any:
    """Open the backend named ``kind`` ("embedded") with its files under ``data_dir``."""
    raise NotImplementedError
