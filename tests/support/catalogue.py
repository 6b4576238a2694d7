"""The gRPC surface the contract declares (T01-T10): service -> methods, written out by hand
so that tests check the generated code and the server against it, not against themselves."""

from __future__ import annotations

DECLARED_METHODS: dict[str, list[str]] = {
    "etcdserverpb.KV": ["Range", "Put", "DeleteRange", "Txn", "Compact"],
    "etcdserverpb.Watch": ["Watch"],
    "etcdserverpb.Lease": [
        "LeaseGrant",
        "LeaseRevoke",
        "LeaseKeepAlive",
        "LeaseTimeToLive",
        "LeaseLeases",
    ],
    "etcdserverpb.Cluster": [
        "MemberAdd",
        "MemberRemove",
        "MemberUpdate",
        "MemberList",
        "MemberPromote",
    ],
    "etcdserverpb.Maintenance": [
        "Alarm",
        "Status",
        "Defragment",
        "Hash",
        "HashKV",
        "Snapshot",
        "MoveLeader",
        "Downgrade",
    ],
    "etcdserverpb.Auth": [
        "AuthEnable",
        "AuthDisable",
        "AuthStatus",
        "Authenticate",
        "UserAdd",
        "UserGet",
        "UserList",
        "UserDelete",
        "UserChangePassword",
        "UserGrantRole",
        "UserRevokeRole",
        "RoleAdd",
        "RoleGet",
        "RoleList",
        "RoleDelete",
        "RoleGrantPermission",
        "RoleRevokePermission",
    ],
    "grpc.health.v1.Health": ["Check", "Watch"],
}
