"""Durable, ordered revision logs (DESIGN "Backends")."""

from __future__ import annotations

from etcdgw.backends.base import Backend, BackendError, CommitConflict, Loaded

__all__ = ["Backend", "BackendError", "CommitConflict", "Loaded", "open_backend"]


async def open_backend(kind: str, data_dir: str) -> Backend:
    """The backend named ``kind``; ``Store.open`` loads it."""
    if kind == "embedded":
        from etcdgw.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(data_dir)
    raise ValueError(f"unknown backend {kind!r} (known: embedded)")
