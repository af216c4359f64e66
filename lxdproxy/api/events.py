"""``GET /1.0/events``: a websocket of LXD event messages (``operation`` and ``lifecycle``).

Operations are born final, so ``lxc`` never needs the events to finish a wait; user code
(``pylxd`` ``client.events()``, ``lxc monitor``) still gets what LXD would send it.
Message shape: ``{"type", "timestamp", "metadata", "location", "project"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from lxdproxy.api.operations import _rfc3339_now

log = logging.getLogger("lxdproxy.api.events")

EVENT_TYPES = frozenset({"operation", "lifecycle", "logging"})


@dataclass(frozen=True)
class _Subscriber:
    ws: web.WebSocketResponse
    types: frozenset[str]


class EventHub:
    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []

    def publish(self, event_type: str, metadata: dict[str, Any]) -> None:
        message = {"type": event_type, "timestamp": _rfc3339_now(), "metadata": metadata,
                   "location": "none", "project": "default"}
        for sub in list(self._subscribers):
            if event_type in sub.types and not sub.ws.closed:
                # send_json only queues on the transport; a dead peer is dropped on its next read
                task = asyncio.get_running_loop().create_task(sub.ws.send_json(message))
                task.add_done_callback(_ignore_result)

    def lifecycle(self, action: str, instance: str) -> None:
        self.publish("lifecycle", {
            "action": action,
            "source": f"/1.0/instances/{instance}",
            "context": {},
            "requestor": {"username": "", "protocol": "unix", "address": ""},
        })

    async def serve(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("type", "")
        types = frozenset(t for t in wanted.split(",") if t) or EVENT_TYPES
        unknown = types - EVENT_TYPES
        if unknown:
            from lxdproxy.errors import LxdError

            raise LxdError(f"'{sorted(unknown)[0]}' isn't a supported notification type", 400)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        sub = _Subscriber(ws, types)
        self._subscribers.append(sub)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._subscribers.remove(sub)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def close(self) -> None:
        for sub in list(self._subscribers):
            with contextlib.suppress(Exception):
                await sub.ws.close()


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("dropping an event for a closed subscriber: %s", task.exception())
