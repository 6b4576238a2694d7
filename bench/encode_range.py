"""CPU time to encode one RangeResponse of 500 keys x 1 KiB: spliced (what the gateway sends)
against building the same message with betterproto2. In-process, no network.

    python -m bench.encode_range [--keys 500] [--value-size 1024] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import os
import time

from etcdgw._proto import etcdserverpb as pb
from etcdgw.mvcc.range import execute_range
from etcdgw.mvcc.replica import Replica, Version


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.encode_range")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()

    replica = Replica()
    for i in range(args.keys):
        rev = replica.rev + 1
        key = b"/registry/pods/default/pod-%06d" % i
        replica.apply(rev, [Version(key, rev, rev, 1, os.urandom(args.value_size), 0)])
    req = pb.RangeRequest(key=b"/registry/pods/", range_end=b"/registry/pods0")
    header = bytes(pb.ResponseHeader(cluster_id=1, member_id=2, revision=replica.rev,
                                     raft_term=1))

    start = time.process_time()
    for _ in range(args.repeat):
        out = execute_range(replica, req, replica.rev, header)
    spliced = (time.process_time() - start) / args.repeat

    message = pb.RangeResponse.parse(out)
    n = max(1, args.repeat // 100)
    start = time.process_time()
    for _ in range(n):
        bytes(message)
    built = (time.process_time() - start) / n

    print(f"RangeResponse, {args.keys} keys x {args.value_size} B ({len(out):,} bytes):")
    print(f"  spliced from stored KeyValue bytes: {spliced * 1e6:8.0f} us CPU")
    print(f"  betterproto2 message encode:        {built * 1e6:8.0f} us CPU")


if __name__ == "__main__":
    main()
