"""The Azure Cosmos DB backend (DESIGN "Backends / cosmos").

Importing this package does not import azure.cosmos: ``CosmosSettings`` and the errors are
plain Python; ``CosmosBackend`` (which needs the SDK) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from etcdgw.backends.base import RequestTooLarge
from etcdgw.backends.cosmos.settings import CosmosSettings, parse_connection_string

if TYPE_CHECKING:
    from etcdgw.backends.cosmos.backend import CosmosBackend
    from etcdgw.backends.cosmos.tail import TailLost

__all__ = ["CosmosBackend", "CosmosSettings", "RequestTooLarge", "TailLost",
           "parse_connection_string"]


def __getattr__(name: str) -> Any:
    if name == "CosmosBackend":
        from etcdgw.backends.cosmos.backend import CosmosBackend

        return CosmosBackend
    if name == "TailLost":
        from etcdgw.backends.cosmos.tail import TailLost

        return TailLost
    raise AttributeError(name)
