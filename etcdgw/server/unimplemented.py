"""UNIMPLEMENTED answers for every declared method no service module serves yet.

etcd clients probe for optional features by calling them and checking for UNIMPLEMENTED (k8s does
so for RangeStream, T08), and etcdctl prints the status text. So a method we do not serve yet still
gets a registered path and a proper status, never a hang or a connection error. As services are
built (watch, lease, auth, ...) their modules claim their paths and this set shrinks by itself:
:class:`Unimplemented` covers whatever the others did not.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from etcdgw.server.boundary import ServerStream, catalogue

__all__ = ["FallbackMapping", "Unimplemented", "unimplemented_message"]


def unimplemented_message(path: str) -> str:
    """grpc-go's texts for what a server does not have (what etcd itself would answer)."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return f'malformed method name: "{path}"'
    _, service, method = parts
    if not any(known.startswith(f"/{service}/") for known in catalogue()):
        return f"unknown service {service}"
    return f"unknown method {method} for service {service}"


def _handler_for(path: str) -> Any:
    message = unimplemented_message(path)

    async def handle(stream: ServerStream) -> None:
        # Answer without reading: grpclib sends a trailers-only response and resets the stream,
        # so whatever the client still sends is discarded by HTTP/2 itself.
        raise GRPCError(Status.UNIMPLEMENTED, message)

    return handle


class FallbackMapping(dict[str, Handler]):
    """A server's path table that answers UNIMPLEMENTED for paths it does not have.

    grpclib's own answer to an unknown path has no content-type header, and grpc-go clients
    turn such a response into UNKNOWN, not UNIMPLEMENTED: kube-apiserver would then fail instead
    of falling back when it probes RangeStream (T08). grpclib looks paths up with ``get``.
    """

    def get(self, path: str, default: Any = None) -> Any:
        found = super().get(path)
        if found is not None:
            return found
        return Handler(_handler_for(path), Cardinality.UNARY_UNARY, bytes, bytes)


class Unimplemented:
    """Servable (``__mapping__``) for every catalogue path not in ``implemented``."""

    def __init__(self, implemented: Collection[str]) -> None:
        self.paths = tuple(sorted(set(catalogue()) - set(implemented)))

    def __mapping__(self) -> dict[str, Handler]:
        table = catalogue()
        return {
            path: Handler(
                _handler_for(path),
                table[path].cardinality,
                table[path].request_type,
                table[path].reply_type,
            )
            for path in self.paths
        }
