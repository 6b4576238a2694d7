"""etcdgw: the etcd v3 API (gRPC) served by an asyncio gateway.

Public API::

    from etcdgw import Config, Gateway

    async with Gateway(Config(data_dir="/var/lib/etcdgw")) as gw:
        await gw.serve_forever()

``Gateway`` is imported lazily: the package is imported whenever any ``etcdgw.*`` module is, and
the pure parts (``etcdgw.errors``, the mvcc core) should not pay for grpclib and the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from etcdgw.config import Config, ConfigError
from etcdgw.errors import EtcdError
from etcdgw.version import ETCD_VERSION, __version__

if TYPE_CHECKING:
    from etcdgw.gateway import Gateway

__all__ = ["ETCD_VERSION", "Config", "ConfigError", "EtcdError", "Gateway", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from etcdgw.gateway import Gateway

        return Gateway
    raise AttributeError(f"module 'etcdgw' has no attribute {name!r}")
