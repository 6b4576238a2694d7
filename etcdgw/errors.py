"""The one registry of etcd errors: a gRPC status code and the exact etcd message.

Clients match errors by their text (the Go client maps the message back to its own error
values, Kubernetes compares those values, the Node client matches substrings), so every
message below is byte for byte etcd's (contract section 15). Nothing else in etcdgw builds an
error message for a client: raise one of these, and the server boundary turns it into a
gRPC status.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["Code", "EtcdError", "internal"]


class Code(enum.IntEnum):
    """gRPC status codes (values as on the wire); mirrors grpclib's Status without importing it."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error a client sees: ``code`` and ``message`` go on the wire unchanged."""

    __slots__ = ("code", "message")

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EtcdError)
            and self.code == other.code
            and self.message == other.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


def _e(code: Code, message: str) -> EtcdError:
    return EtcdError(code, message)


_I = Code.INVALID_ARGUMENT
_F = Code.FAILED_PRECONDITION
_U = Code.UNAVAILABLE

# E02: revisions
COMPACTED: Final = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV: Final = _e(
    Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
)

# E03: malformed requests
EMPTY_KEY: Final = _e(_I, "etcdserver: key is not provided")
KEY_NOT_FOUND: Final = _e(_I, "etcdserver: key not found")
VALUE_PROVIDED: Final = _e(_I, "etcdserver: value is provided")
LEASE_PROVIDED: Final = _e(_I, "etcdserver: lease is provided")
TOO_MANY_OPS: Final = _e(_I, "etcdserver: too many operations in txn request")
DUPLICATE_KEY: Final = _e(_I, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION: Final = _e(_I, "etcdserver: invalid sort option")
REQUEST_TOO_LARGE: Final = _e(_I, "etcdserver: request is too large")
INVALID_CLIENT_API_VERSION: Final = _e(_I, "etcdserver: invalid client api version")

# E04: leases
LEASE_NOT_FOUND: Final = _e(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS: Final = _e(_F, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE: Final = _e(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# E05: capacity
NO_SPACE: Final = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
TOO_MANY_REQUESTS: Final = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

# E06: availability
NO_LEADER: Final = _e(_U, "etcdserver: no leader")
LEADER_CHANGED: Final = _e(_U, "etcdserver: leader changed")
SERVER_STOPPED: Final = _e(_U, "etcdserver: server stopped")
TIMEOUT: Final = _e(_U, "etcdserver: request timed out")
TIMEOUT_CONNECTION_LOST: Final = _e(
    _U, "etcdserver: request timed out, possibly due to connection lost"
)
UNHEALTHY_CLUSTER: Final = _e(_U, "etcdserver: unhealthy cluster")

# E07: server state
NOT_LEADER: Final = _e(_F, "etcdserver: not leader")
NOT_CAPABLE: Final = _e(_F, "etcdserver: not capable")
BAD_LEADER_TRANSFEREE: Final = _e(_F, "etcdserver: bad leader transferee")
CORRUPT: Final = _e(Code.DATA_LOSS, "etcdserver: corrupt cluster")

# E08, E09: auth
ROOT_USER_NOT_EXIST: Final = _e(_F, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST: Final = _e(_F, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST: Final = _e(_F, "etcdserver: user name already exists")
USER_NOT_FOUND: Final = _e(_F, "etcdserver: user name not found")
ROLE_ALREADY_EXIST: Final = _e(_F, "etcdserver: role name already exists")
ROLE_NOT_FOUND: Final = _e(_F, "etcdserver: role name not found")
ROLE_NOT_GRANTED: Final = _e(_F, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED: Final = _e(_F, "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED: Final = _e(_F, "etcdserver: authentication is not enabled")
USER_EMPTY: Final = _e(_I, "etcdserver: user name is empty")
ROLE_EMPTY: Final = _e(_I, "etcdserver: role name is empty")
AUTH_FAILED: Final = _e(_I, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_NOT_GIVEN: Final = _e(_I, "etcdserver: permission not given")
INVALID_AUTH_MGMT: Final = _e(_I, "etcdserver: invalid auth management")
AUTH_OLD_REVISION: Final = _e(_I, "etcdserver: revision of auth store is old")
PERMISSION_DENIED: Final = _e(Code.PERMISSION_DENIED, "etcdserver: permission denied")
INVALID_AUTH_TOKEN: Final = _e(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")

# E10: membership (a gateway has a fixed membership)
MEMBER_NOT_FOUND: Final = _e(Code.NOT_FOUND, "etcdserver: member not found")
INVALID_PEER_URL: Final = _e(_I, "etcdserver: given member URLs are invalid")
MEMBER_NOT_LEARNER: Final = _e(_F, "etcdserver: can only promote a learner member")

# E11: downgrade
WRONG_DOWNGRADE_VERSION_FORMAT: Final = _e(
    _I, "etcdserver: wrong downgrade target version format"
)
INVALID_DOWNGRADE_TARGET: Final = _e(_I, "etcdserver: invalid downgrade target version")
NO_INFLIGHT_DOWNGRADE: Final = _e(_F, "etcdserver: no inflight downgrade job")

# E12: cancellation
WATCH_CANCELED: Final = _e(Code.CANCELLED, "etcdserver: watch canceled")
REQUEST_CANCELED: Final = _e(Code.CANCELLED, "etcdserver: request canceled")
DEADLINE: Final = _e(Code.DEADLINE_EXCEEDED, "etcdserver: context deadline exceeded")

# E13: watch cancel reasons travel in WatchResponse.cancel_reason, not as a status.
WATCH_DUPLICATE_ID_REASON: Final = "mvcc: duplicate watch ID provided on the WatchStream"
WATCH_EMPTY_RANGE_REASON: Final = "mvcc: watcher range is empty"


def internal(message: str) -> EtcdError:
    """E14: an unmapped failure. The text must not carry a traceback or a secret."""
    return EtcdError(Code.UNKNOWN, message)
