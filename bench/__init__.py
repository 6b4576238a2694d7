"""etcdgw benchmarks: the workloads of docs' bench-spec, run against etcdgw and real etcd.

Entry point: ``python -m bench WORKLOAD [options]``, ``python -m bench plot RESULTS.json``,
``python -m bench smoke``. See bench/README.md.
"""
