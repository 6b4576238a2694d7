"""etcdserverpb.Cluster: a gateway presents itself as a one-member cluster.

MemberList is what etcdctl ``--cluster`` and the Go client's endpoint sync dial from, so the one
member's ``clientURLs`` must be URLs that reach this gateway (CL02): the advertised URLs, with a
configured port 0 replaced by the port actually bound. Membership changes (MemberAdd, ...) are
answered UNIMPLEMENTED for now (CL03 allows rejecting them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from grpclib.const import Handler

from etcdgw._proto import etcdserverpb
from etcdgw.server.boundary import Boundary
from etcdgw.store import RAFT_TERM, Store

__all__ = ["PEER_URL", "Cluster"]

MEMBER_LIST: Final = "/etcdserverpb.Cluster/MemberList"

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
    ) -> None:
        self._store = store
        self._boundary = boundary
        self._name = name
        # A callable: the gateway learns its bound ports only after the handlers exist.
        self._client_urls = client_urls

    def __mapping__(self) -> dict[str, Handler]:
        return {MEMBER_LIST: self._boundary.unary(MEMBER_LIST, self.member_list, write=False)}

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
        return etcdserverpb.MemberListResponse(header=header, members=[self.member()])
