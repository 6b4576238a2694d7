"""Helpers for tests that run real processes: etcd, etcdgw and etcdctl on loopback sockets.

Nothing here mocks anything: servers are real processes on 127.0.0.1, readiness is a real gRPC
call, certificates come from trustme. The pytest fixtures built on these live in tests/conftest.py.
"""
