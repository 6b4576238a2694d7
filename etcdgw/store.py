"""Placeholder: the real store (commit pipeline, replica owner) is being written. API is fixed."""

from __future__ import annotations

from typing import Any


class Store:
    """Owns the replica and the commit pipeline. Every method returns encoded response bytes
    (the wire form of the etcdserverpb response message) or raises etcdgw.errors.EtcdError."""

    @classmethod
    async def open(cls, backend: Any, *, max_txn_ops: int = 128) -> Store:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @property
    def cluster_id(self) -> int:
        raise NotImplementedError

    @property
    def member_id(self) -> int:
        raise NotImplementedError

    @property
    def revision(self) -> int:
        raise NotImplementedError

    async def range(self, req: Any) -> bytes:  # etcdserverpb.RangeRequest -> RangeResponse bytes
        raise NotImplementedError

    async def put(self, req: Any) -> bytes:
        raise NotImplementedError

    async def delete_range(self, req: Any) -> bytes:
        raise NotImplementedError

    async def txn(self, req: Any) -> bytes:
        raise NotImplementedError

    async def compact(self, req: Any) -> bytes:
        raise NotImplementedError
