"""Automatic compaction, like etcd's ``--auto-compaction-mode``/``--auto-compaction-retention``.

- ``periodic`` with retention P (e.g. ``1h``, ``30m``, or ``5`` = 5 hours): the revision is
  sampled every min(P, 1 h)/10; every min(P, 1 h) the store is compacted to the newest sample
  taken at least P ago, so about P of history stays readable (etcd 3.3+'s periodic compactor).
- ``revision`` with retention N: every 5 minutes (etcd's interval), compact to current - N when
  that is above the last compaction point.

A compaction is one ``Compact`` request through the store's pipeline, the path a client's takes:
it only records the new compaction point (the backend then deletes in bounded batches, in the
background), so requests never wait for it. Errors (someone else compacted further, the backend
is failing) are logged and the next round tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final

from etcdgw import errors
from etcdgw._proto import etcdserverpb
from etcdgw.store import Store

__all__ = ["REVISION_INTERVAL", "AutoCompactor"]

log = logging.getLogger(__name__)

#: etcd's revision compactor checks every 5 minutes.
REVISION_INTERVAL: Final = 300.0
_HOUR: Final = 3600.0


class AutoCompactor:
    def __init__(
        self, store: Store, mode: str, retention: float, *, interval: float | None = None
    ) -> None:
        if mode not in ("periodic", "revision"):
            raise ValueError(f"unknown auto compaction mode {mode!r}")
        self._store = store
        self.mode = mode
        self.retention = retention
        if mode == "periodic":
            self.interval = interval if interval is not None else min(retention, _HOUR)
        else:
            self.interval = interval if interval is not None else REVISION_INTERVAL
        self._task: asyncio.Task[None] | None = None
        #: Compactions done (for tests and logs).
        self.compactions = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="etcdgw-auto-compaction")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        if self.mode == "periodic":
            await self._periodic()
        else:
            await self._by_revision()

    async def _periodic(self) -> None:
        step = self.interval / 10
        samples: deque[tuple[float, int]] = deque()  # (monotonic time, revision), oldest first
        next_compaction = time.monotonic() + self.interval
        while True:
            now = time.monotonic()
            samples.append((now, self._store.revision))
            if now >= next_compaction - step / 2:
                next_compaction = now + self.interval
                target = None
                # The newest sample at least `retention` old (half a step of timer slack).
                while samples and now - samples[0][0] >= self.retention - step / 2:
                    target = samples.popleft()[1]
                if target is not None:
                    await self._compact(target)
            await asyncio.sleep(step)

    async def _by_revision(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._compact(self._store.revision - int(self.retention))

    async def _compact(self, revision: int) -> None:
        if revision <= max(self._store.compact_revision, 0):
            return
        try:
            await self._store.compact(etcdserverpb.CompactionRequest(revision=revision))
        except errors.EtcdError as exc:
            if exc != errors.COMPACTED:
                log.warning("auto compaction at revision %d failed: %s", revision, exc.message)
            return
        self.compactions += 1
        log.info("auto compaction (%s) at revision %d", self.mode, revision)
