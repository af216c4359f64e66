"""``PUT /internal/shutdown`` and ``PUT /internal/reload``: the daemon's own control endpoints.

As LXD's ``lxd shutdown`` does with ``/internal/shutdown``, only on the local unix socket: a
client over HTTPS, trusted or not, never reaches them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from lxdproxy.api.envelopes import error_response, sync_response


@dataclass(frozen=True)
class InternalControl:
    shutdown: Callable[[], Awaitable[None]]  # stop everything (devices, workers), then exit
    reload: Callable[[], Awaitable[None]]  # replace the data plane's workers


def _local(request: web.Request) -> bool:
    # A unix socket's name is a path (str); a TCP one is an (address, port) tuple.
    return isinstance(request.transport.get_extra_info("sockname") if request.transport else None,
                      str)


def add_internal_routes(app: web.Application, control: InternalControl) -> None:
    async def shutdown(request: web.Request) -> web.Response:
        if not _local(request):
            return error_response("not found", 404)
        await control.shutdown()
        return sync_response({})

    async def reload(request: web.Request) -> web.Response:
        if not _local(request):
            return error_response("not found", 404)
        await control.reload()
        return sync_response({})

    app.router.add_put("/internal/shutdown", shutdown)
    app.router.add_put("/internal/reload", reload)
