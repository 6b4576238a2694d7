"""Version strings: etcdgw's own, and the etcd server version it emulates.

The etcd version is what clients negotiate features with, not decoration: Kubernetes parses
``StatusResponse.version`` and turns off RequestWatchProgress (and with it consistent reads from
its cache and WatchList) below 3.5.13, and Go clients with RejectOldCluster compare minors
(contract MT02). It must be the newest 3.5 patch release whose behaviour we emulate (Z03), and
``/version`` must report the same value (HT03).
"""

from __future__ import annotations

from typing import Final

__all__ = ["ETCD_API_VERSION", "ETCD_VERSION", "__version__"]

__version__: Final = "0.1.0"

#: The etcd server version reported by Maintenance.Status and ``/version``.
ETCD_VERSION: Final = "3.5.17"

#: The API line clients see ("3.5"), as etcd reports in ``etcdcluster``.
ETCD_API_VERSION: Final = "3.5"
