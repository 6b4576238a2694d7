"""Several etcdgw processes on one Cosmos container (issue 5), against the Cosmos test server.

- three gateways: concurrent Kubernetes-style writers on all three, every watch stream from
  revision 1 equal to the acknowledged writes, read-after-write across every gateway pair
  (linearizable Range and Txn, G01), etcdctl with all three endpoints, MemberList;
- SIGKILL of one gateway during two-key txns: nothing acknowledged lost, no half txn, the others
  serve at once, a restarted gateway (same --name) catches up exactly;
- a gateway whose Cosmos requests fail (503) for a while answers UNAVAILABLE with etcd's message
  and recovers;
- the store over the Cosmos backend in-process, where a bug needs a precise reproduction.

Cosmos request counts per etcd operation are measured (printed, never asserted) by
``test_requests_per_operation``; run it with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio

import pytest
from support.cosmos import drop_database, settings_for

from etcdgw._proto import etcdserverpb as pb

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------
# the store over the Cosmos backend, in-process


async def test_split_group_commit_is_applied_once(cosmos_endpoint: str) -> None:
    """A group commit too large for one batch is a split commit: meta moves at step 3, and the
    key documents and the lock release follow. The tail read the new revisions before commit()
    returned and applied them; the pipeline then applied them again ("revision 2 applied after
    41") and every put of the batch failed with "etcdgw: internal error". Fixed in the backend:
    the tail yields nothing of this backend's own commit before commit() has returned."""
    from etcdgw.backends.cosmos import CosmosBackend
    from etcdgw.store import Store

    settings = settings_for(cosmos_endpoint, max_batch_ops=5)
    backend = CosmosBackend(settings)
    store = await Store.open(backend, member_name="a")
    try:
        for _ in range(3):
            puts = [store.put(pb.PutRequest(key=b"k%03d" % i, value=b"v")) for i in range(40)]
            out = await asyncio.gather(*puts, return_exceptions=True)
            assert [o for o in out if not isinstance(o, bytes)] == []
        assert store.revision == 121
        r = pb.RangeResponse.parse(await store.range(pb.RangeRequest(key=b"k", range_end=b"l")))
        assert (r.count, {kv.version for kv in r.kvs}) == (40, {3})
    finally:
        await store.close()
        await backend.close()
        await drop_database(settings)
