"""Durable, ordered revision logs (DESIGN "Backends")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from etcdgw.backends.base import Backend, BackendError, CommitConflict, Loaded

if TYPE_CHECKING:
    from etcdgw.backends.cosmos.settings import CosmosSettings

__all__ = ["Backend", "BackendError", "CommitConflict", "Loaded", "open_backend"]


async def open_backend(
    kind: str, data_dir: str, *, cosmos: CosmosSettings | None = None
) -> Backend:
    """The backend named ``kind``; ``Store.open`` loads it. ``cosmos``: the settings of the
    "cosmos" backend (azure.cosmos is imported only then)."""
    if kind == "embedded":
        from etcdgw.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(data_dir)
    if kind == "cosmos":
        if cosmos is None:
            raise ValueError("the cosmos backend needs its settings (endpoint and key)")
        from etcdgw.backends.cosmos.backend import CosmosBackend

        return CosmosBackend(cosmos)
    raise ValueError(f"unknown backend {kind!r} (known: embedded, cosmos)")
