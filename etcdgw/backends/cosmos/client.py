"""One Cosmos container, reached through azure.cosmos.aio, with bounded retries and errors
mapped by status code (the only module besides the tail that touches the SDK).

- 429: wait the retry-after the service asked for (capped), then retry; bounded.
- 408/410/449/5xx, timeouts, lost connections: exponential backoff, bounded; for a write whose
  outcome the failure leaves unknown (everything but 429 and a connection that could not be
  made), :class:`OutcomeUnknown` instead, so that the commit resolves it by reading the log
  (never a blind replay).
- After the retries: :class:`BackendError`, its text scrubbed of the key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from azure.core.exceptions import AzureError, ServiceRequestError
from azure.cosmos import PartitionKey
from azure.cosmos._retry_options import RetryOptions
from azure.cosmos.aio import CosmosClient
from azure.cosmos.documents import ConnectionPolicy
from azure.cosmos.exceptions import (
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from etcdgw.backends.base import BackendError, Throttled
from etcdgw.backends.cosmos.model import PK
from etcdgw.backends.cosmos.settings import CosmosSettings

__all__ = ["Container", "OutcomeUnknown"]

log = logging.getLogger(__name__)
#: The SDK logs every request and response at INFO; keep that out of the gateway's log unless
#: asked for (set this logger to DEBUG/INFO).
http_log = logging.getLogger("etcdgw.backends.cosmos.http")
http_log.setLevel(logging.WARNING)
T = TypeVar("T")

_RETRY_STATUS = frozenset({408, 410, 449, 500, 502, 503, 504})
#: Only what the indexes serve: the queries filter/sort on type, rev and key. Values are never
#: indexed (they are most of the bytes).
INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/type/?"}, {"path": "/rev/?"}, {"path": "/key/?"}],
    "excludedPaths": [{"path": "/*"}],
}


def _policy() -> ConnectionPolicy:
    policy = ConnectionPolicy()
    policy.RetryOptions = RetryOptions(max_retry_attempt_count=0, max_wait_time_in_seconds=0)
    return policy


class OutcomeUnknown(Exception):
    """A write was sent and its answer lost: it may or may not have been applied."""


def _retry_after(e: CosmosHttpResponseError) -> float | None:
    headers = e.headers or {}
    for name in ("x-ms-retry-after-ms", "retry-after-ms"):
        if headers.get(name):
            try:
                return float(headers[name]) / 1000.0
            except ValueError:
                pass
    if headers.get("retry-after"):
        try:
            return float(headers["retry-after"])
        except ValueError:
            pass
    return None


def _never_sent(e: ServiceRequestError) -> bool:
    """The connection could not be made, so no byte of the request was sent."""
    cause = getattr(e, "inner_exception", None) or e.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError)


class Container:
    """The container plus request accounting (``requests``: every call sent to Cosmos)."""

    def __init__(self, settings: CosmosSettings, *, transport: Any = None) -> None:
        self.s = settings
        self._transport = transport
        self._client: CosmosClient | None = None
        self._c: Any = None
        self.requests = 0

    async def open(self) -> None:
        kwargs: dict[str, Any] = {
            "connection_verify": self.s.connection_verify,
            # Retries are ours (bounded, with the outcome of writes resolved): the SDK's own
            # throttling retries would wait up to 30 s per call.
            "connection_policy": _policy(),
            "retry_total": 0,
            "logger": http_log,
        }
        if self.s.consistency:
            kwargs["consistency_level"] = self.s.consistency
        if self.s.preferred_regions:
            kwargs["preferred_locations"] = list(self.s.preferred_regions)
        if self._transport is not None:
            kwargs["transport"] = self._transport
        client = CosmosClient(self.s.endpoint, credential=self.s.key, **kwargs)
        try:
            await self._setup(client)
        except BackendError:
            await client.close()
            raise
        except Exception as e:  # e.g. a key that is not base64: scrubbed, never echoed
            await client.close()
            raise self.error("open", e) from None
        self._client = client

    async def _setup(self, client: CosmosClient) -> None:
        await self.call("connect", client.__aenter__)
        db = await self._if_not_exists(
            "create database",
            lambda: client.create_database_if_not_exists(self.s.database),
        )
        create: dict[str, Any] = {"indexing_policy": INDEXING_POLICY}
        if self.s.throughput:
            create["offer_throughput"] = self.s.throughput
        self._c = await self._if_not_exists(
            "create container",
            lambda: db.create_container_if_not_exists(
                self.s.container, PartitionKey(path="/pk"), **create),
        )

    async def _if_not_exists(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """The SDK's ``create_*_if_not_exists`` reads, then creates: gateways starting
        together on a new database race between the two, and the losers get a 409. It exists
        then; the next call reads it."""
        for _ in range(3):
            try:
                return await self.call(what, fn)
            except CosmosResourceExistsError:
                continue
        return await self.call(what, fn)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    @property
    def raw(self) -> Any:
        if self._c is None:
            raise BackendError("cosmos: backend is not open")
        return self._c

    # -- the retry loop ---------------------------------------------------------------------

    def error(self, what: str, e: BaseException) -> BackendError:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        throttled = isinstance(e, CosmosHttpResponseError) and e.status_code == 429
        kind = Throttled if throttled else BackendError
        return kind(self.s.scrub(f"cosmos {what}: {text}"))

    async def call(self, what: str, fn: Callable[[], Awaitable[T]], *,
                   write: bool = False) -> T:
        """``fn()`` with bounded retries. ``write``: a failure that may have left the write
        applied raises OutcomeUnknown instead of being retried."""
        attempt = 0
        while True:
            self.requests += 1
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives as fn() completes, and a cancelled tail then ran on forever (the
                # gateway hung on close, SIGTERM included).
                async with asyncio.timeout(self.s.request_timeout):
                    return await fn()
            except CosmosBatchOperationError:
                raise  # an answer: the caller reads the operations' statuses
            except CosmosResourceNotFoundError:
                raise
            except CosmosHttpResponseError as e:
                status = e.status_code or 0
                if status == 429:
                    delay = min(_retry_after(e) or self._backoff(attempt), self.s.max_retry_after)
                elif status in _RETRY_STATUS:
                    if write:
                        raise OutcomeUnknown(self.error(what, e)) from e
                    delay = self._backoff(attempt)
                elif status in (404, 409, 412):
                    raise  # answers the callers act on
                else:
                    raise self.error(what, e) from None
                err: BaseException = e
            except ServiceRequestError as e:
                # azure-core maps every aiohttp ClientError here, a lost response
                # (ServerDisconnectedError after the request went out) included: only a
                # failed connect proves the request never reached the service.
                if write and not _never_sent(e):
                    raise OutcomeUnknown(self.error(what, e)) from e
                delay, err = self._backoff(attempt), e
            except (TimeoutError, AzureError, aiohttp.ClientError, OSError) as e:
                if write:
                    raise OutcomeUnknown(self.error(what, e)) from e
                delay, err = self._backoff(attempt), e
            attempt += 1
            if attempt > self.s.max_retries:
                raise self.error(what, err) from None
            log.debug("cosmos %s: retry %d in %.3fs after %s", what, attempt, delay,
                      self.s.scrub(str(err)[:200]))
            await asyncio.sleep(delay)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(0.05 * 2.0**attempt, 2.0) * (0.5 + random.random() / 2))

    # -- operations -------------------------------------------------------------------------

    async def read(self, doc_id: str) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = await self.call(
                f"read {doc_id}", lambda: self.raw.read_item(doc_id, partition_key=PK))
        except CosmosResourceNotFoundError:
            return None
        return doc

    async def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of a query in the one partition (``sql`` must say ``c.pk = @pk``)."""
        parameters = [{"name": "@pk", "value": PK}]
        parameters += [{"name": f"@{k}", "value": v} for k, v in params.items()]

        async def run() -> list[dict[str, Any]]:
            rows = self.raw.query_items(sql, parameters=parameters, partition_key=PK,
                                        max_item_count=100)
            return [row async for row in rows]

        return await self.call("query", run)

    async def batch(self, ops: list[tuple[Any, ...]], what: str = "batch") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call(
            what, lambda: self.raw.execute_item_batch(ops, partition_key=PK), write=True)
        return result

    async def delete(self, doc_id: str, etag: str | None = None) -> bool:
        """Delete one document; False if it was not there (or changed, with ``etag``)."""
        kwargs: dict[str, Any] = {}
        if etag is not None:
            from azure.core import MatchConditions

            kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        try:
            await self.call(f"delete {doc_id}",
                            lambda: self.raw.delete_item(doc_id, partition_key=PK, **kwargs))
        except CosmosResourceNotFoundError:
            return False
        except CosmosHttpResponseError as e:
            if e.status_code == 412:
                return False
            raise self.error(f"delete {doc_id}", e) from None
        return True

    async def upsert(self, doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self.call(f"upsert {doc['id']}",
                                              lambda: self.raw.upsert_item(doc))
        return out
