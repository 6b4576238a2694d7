"""A fault-injecting transport for azure.cosmos.aio (azure-core's AioHttpTransport underneath).

Every request goes through :meth:`FaultTransport.send`, which counts it and, when an armed fault
matches it, answers for the service instead:

- ``status(429, retry_after_ms=30)`` / ``status(503)``: a fabricated error response, the request
  never reaches the server;
- ``hang()``: the request never reaches the server and no answer comes (the backend's own
  deadline fires);
- ``lose_response()``: the request IS sent and applied by the server, then the answer is lost
  (a connection reset after sending).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpResponse
from azure.core.utils import CaseInsensitiveDict


def is_batch(request: Any) -> bool:
    return str(request.headers.get("x-ms-cosmos-is-batch-request", "")).lower() == "true"


def is_feed(request: Any) -> bool:
    return "a-im" in {k.lower() for k in request.headers}


def is_meta_read(request: Any) -> bool:
    return request.method == "GET" and str(request.url).rstrip("/").endswith("/docs/meta")


def is_query(request: Any) -> bool:
    return request.method == "POST" and str(
        request.headers.get("x-ms-documentdb-isquery", "")).lower() == "true"


class _FakeResponse(AsyncHttpResponse):
    def __init__(self, request: Any, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(request, None)
        self.status_code = status
        self.headers = CaseInsensitiveDict(headers)
        self.reason = "injected"
        self.content_type = "application/json"
        self._body = body

    def body(self) -> bytes:
        return self._body

    def text(self, encoding: str | None = None) -> str:
        return self._body.decode()

    async def load_body(self) -> None:
        return None


@dataclass
class Fault:
    match: Callable[[Any], bool]
    action: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    hits: int = 0


class FaultTransport(AioHttpTransport):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faults: list[Fault] = []
        self.sent: list[str] = []  # one line per request that reached the server

    def arm(self, match: Callable[[Any], bool], action: str, *, status: int = 0,
            headers: dict[str, str] | None = None, times: int = 1) -> Fault:
        f = Fault(match, action, status, headers or {}, times)
        self.faults.append(f)
        return f

    def status(self, match: Callable[[Any], bool], status: int, *, retry_after_ms: int = 0,
               times: int = 1) -> Fault:
        headers = {"x-ms-retry-after-ms": str(retry_after_ms)} if retry_after_ms else {}
        return self.arm(match, "status", status=status, headers=headers, times=times)

    def hang(self, match: Callable[[Any], bool], times: int = 1) -> Fault:
        return self.arm(match, "hang", times=times)

    def lose_response(self, match: Callable[[Any], bool], times: int = 1) -> Fault:
        return self.arm(match, "lose", times=times)

    def _take(self, request: Any) -> Fault | None:
        for f in self.faults:
            if f.hits < f.times and f.match(request):
                f.hits += 1
                return f
        return None

    async def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        f = self._take(request)
        if f is not None and f.action == "status":
            body = json.dumps({"code": str(f.status), "message": "injected"}).encode()
            headers = {"content-type": "application/json", **f.headers}
            return _FakeResponse(request, f.status, headers, body)
        if f is not None and f.action == "hang":
            await asyncio.sleep(3600)
        label = f"{request.method} {str(request.url).split('/docs', 1)[-1].rstrip('/') or '/'}"
        if is_batch(request):
            label = "BATCH"
        elif is_feed(request):
            label = "FEED"
        elif is_query(request):
            label = "QUERY"
        self.sent.append(label)
        response = await super().send(request, **kwargs)
        if f is not None and f.action == "lose":
            await response.load_body()
            raise ServiceResponseError("injected: connection lost after the request was sent")
        return response
