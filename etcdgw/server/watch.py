"""etcdserverpb.Watch/Watch: one bidirectional stream, many watchers (contract section 10).

The stream's two directions run side by side: this handler reads requests and turns them into
hub operations (each create answered in request order, W07), and a sender task writes the
stream's queue to the client. A client that half-closes its side keeps receiving (etcd keeps
the stream open until the client goes away); when the client goes away every watcher of the
stream is freed (W27).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import betterproto2
from grpclib.const import Handler

from etcdgw.server.boundary import Boundary, Call
from etcdgw.server.codec import Preencoded
from etcdgw.watch.hub import WatchHub, WatchStream

__all__ = ["Watch"]

WATCH: Final = "/etcdserverpb.Watch/Watch"


class Watch:
    def __init__(self, hub: WatchHub, boundary: Boundary) -> None:
        self._hub = hub
        self._boundary = boundary

    def __mapping__(self) -> dict[str, Handler]:
        return {WATCH: self._boundary.streaming(WATCH, self.watch)}

    async def watch(self, call: Call) -> None:
        stream = self._hub.open_stream()
        sender = asyncio.create_task(_send(call, stream), name="etcdgw-watch-send")
        try:
            while True:
                recv = asyncio.ensure_future(call.recv())
                done, _ = await asyncio.wait({recv, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:
                    recv.cancel()
                    sender.result()  # the client is gone: raise what the send raised
                    return
                request = recv.result()
                if request is None:
                    break  # half-closed: keep sending until the client goes away
                _dispatch(stream, request)
            await sender
        finally:
            stream.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


def _dispatch(stream: WatchStream, request: Any) -> None:
    kind, found = betterproto2.which_one_of(request, "request_union")
    r: Any = found
    if kind == "create_request":
        stream.create(
            key=r.key,
            range_end=r.range_end,
            start_revision=r.start_revision,
            prev_kv=r.prev_kv,
            filters=[int(f) for f in r.filters],
            progress_notify=r.progress_notify,
            fragment=r.fragment,
            watch_id=r.watch_id,
        )
    elif kind == "cancel_request":
        stream.cancel(r.watch_id)
    elif kind == "progress_request":
        stream.progress()
    # W01: an empty or unknown union is ignored and the stream stays open.


async def _send(call: Call, stream: WatchStream) -> None:
    while True:
        data = await stream.next_response()
        await call.send(Preencoded(data))
