"""HashKV: a checksum of the retained key history up to a revision (contract MT08).

Pure and deterministic: two replicas that went through the same history and the same
compactions give the same value, whatever their process, restart or backend file layout. It is
a CRC-32 (zlib's polynomial) over the stored KeyValue wire bytes of every retained version with
``mod_revision <= rev``, keys in ascending byte order and each key's versions in revision order;
tombstones count (as their DELETE-event bytes). etcd hashes its bbolt key bucket instead, so the
values differ between etcd and etcdgw; what clients compare is one server against itself or its
peers (etcdctl endpoint hashkv, corruption checks).
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from operator import attrgetter

from etcdgw.mvcc.keys import FROM_KEY, KeyRange
from etcdgw.mvcc.replica import Replica

__all__ = ["hash_kv"]

_MOD = attrgetter("mod")
_ALL = KeyRange.of(b"\x00", FROM_KEY)


def hash_kv(replica: Replica, rev: int) -> int:
    """The uint32 hash of the replica's retained versions at or below ``rev``."""
    crc = zlib.crc32(b"etcdgw-kv")
    for key in replica.keys_in(_ALL):
        history = replica.history(key)
        if history is None:
            continue
        versions = history.versions
        end = len(versions) if versions[-1].mod <= rev else bisect_right(versions, rev, key=_MOD)
        for i in range(end):
            crc = zlib.crc32(versions[i].framed, crc)
    return crc & 0xFFFFFFFF
