"""etcdserverpb.Cluster: a gateway presents itself as a one-member cluster.

MemberList is what etcdctl ``--cluster`` and the Go client's endpoint sync dial from, so the one
member's ``clientURLs`` must be URLs that reach this gateway (CL02): the advertised URLs, with a
configured port 0 replaced by the port actually bound.

Membership is fixed (CL03 allows rejecting changes), and each change is refused with the etcd
error an operator can act on, printed by etcdctl as ``Error: <message>``:

- MemberAdd: FAILED_PRECONDITION ``etcdserver: not capable`` (INVALID_ARGUMENT ``given member
  URLs are invalid`` first, for URLs etcd would refuse);
- MemberRemove, MemberUpdate: NOT_FOUND ``etcdserver: member not found`` for an id that is not
  this gateway's, ``etcdserver: not capable`` for its own;
- MemberPromote: ``member not found``, or for this (voting) member FAILED_PRECONDITION
  ``etcdserver: can only promote a learner member``, exactly etcd's answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

from grpclib.const import Handler

from etcdgw import errors
from etcdgw._proto import etcdserverpb
from etcdgw.server.boundary import Boundary
from etcdgw.store import RAFT_TERM, Store

__all__ = ["PEER_URL", "Cluster"]

MEMBER_LIST: Final = "/etcdserverpb.Cluster/MemberList"
MEMBER_ADD: Final = "/etcdserverpb.Cluster/MemberAdd"
MEMBER_REMOVE: Final = "/etcdserverpb.Cluster/MemberRemove"
MEMBER_UPDATE: Final = "/etcdserverpb.Cluster/MemberUpdate"
MEMBER_PROMOTE: Final = "/etcdserverpb.Cluster/MemberPromote"

#: Nothing dials a gateway's peer URL, but tools expect a valid one (CL02); this is etcd's default
#: ``--initial-advertise-peer-urls``.
PEER_URL: Final = "http://localhost:2380"


class Cluster:
    def __init__(
        self,
        store: Store,
        boundary: Boundary,
        *,
        name: str,
        client_urls: Callable[[], tuple[str, ...]],
        peers: Callable[[], Awaitable[list[tuple[int, str, list[str]]]]] | None = None,
    ) -> None:
        self._store = store
        self._boundary = boundary
        self._name = name
        # On a shared log: the other live gateways, (member id, name, client URLs).
        self._peers = peers
        # A callable: the gateway learns its bound ports only after the handlers exist.
        self._client_urls = client_urls

    def __mapping__(self) -> dict[str, Handler]:
        unary = self._boundary.unary
        return {
            MEMBER_LIST: unary(MEMBER_LIST, self.member_list, write=False),
            MEMBER_ADD: unary(MEMBER_ADD, self.member_add, write=True),
            MEMBER_REMOVE: unary(MEMBER_REMOVE, self.member_remove, write=True),
            MEMBER_UPDATE: unary(MEMBER_UPDATE, self.member_update, write=True),
            MEMBER_PROMOTE: unary(MEMBER_PROMOTE, self.member_promote, write=True),
        }

    def member(self) -> Any:
        return etcdserverpb.Member(
            id=self._store.member_id,
            name=self._name,
            peer_ur_ls=[PEER_URL],
            client_ur_ls=list(self._client_urls()),
            is_learner=False,
        )

    async def member_list(self, request: Any) -> Any:
        # H10: cluster RPCs carry no revision.
        header = etcdserverpb.ResponseHeader(
            cluster_id=self._store.cluster_id,
            member_id=self._store.member_id,
            raft_term=RAFT_TERM,
        )
        members = [self.member()]
        if self._peers is not None:
            for member_id, name, urls in await self._peers():
                if member_id != self._store.member_id:
                    members.append(etcdserverpb.Member(
                        id=member_id, name=name, peer_ur_ls=[PEER_URL], client_ur_ls=urls,
                        is_learner=False))
        return etcdserverpb.MemberListResponse(header=header, members=members)

    # -- membership changes: refused (see the module docstring) ----------------------------

    def _check_known(self, member_id: int) -> None:
        if member_id != self._store.member_id:  # peers cannot be changed from here either
            raise errors.MEMBER_NOT_FOUND

    async def member_add(self, request: Any) -> Any:
        for url in request.peer_ur_ls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https", "unix", "unixs") or not parts.netloc:
                raise errors.INVALID_PEER_URL
        raise errors.NOT_CAPABLE

    async def member_remove(self, request: Any) -> Any:
        self._check_known(request.id)
        raise errors.NOT_CAPABLE

    async def member_update(self, request: Any) -> Any:
        self._check_known(request.id)
        raise errors.NOT_CAPABLE

    async def member_promote(self, request: Any) -> Any:
        self._check_known(request.id)
        raise errors.MEMBER_NOT_LEARNER
