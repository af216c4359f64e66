"""``/1.0/warnings`` as LXD 5.0.2 serves it (lxd/warnings.go): what ``lxc warning`` drives.

``GET /1.0/warnings`` lists URLs (recursion 0; ``null`` when there are none, as Go encodes a
nil slice) or warnings (recursion 1); ``GET/PUT/PATCH/DELETE /1.0/warnings/<uuid>``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from lxdproxy.api.envelopes import sync_response
from lxdproxy.api.request_json import decode_object, string_map
from lxdproxy.warning_registry import WarningRegistry, warning_json

WARNINGS = web.AppKey("warnings", WarningRegistry)


def _project(request: web.Request) -> str | None:
    return request.query.get("project") or None


async def list_warnings(request: web.Request) -> web.Response:
    rows = request.app[WARNINGS].list(_project(request))
    try:
        recursion = int(request.query.get("recursion", "0"))
    except ValueError:
        recursion = 0
    if recursion == 0:
        return sync_response([f"/1.0/warnings/{w.uuid}" for w in rows] or None)
    return sync_response([warning_json(w) for w in rows])


async def get_warning(request: web.Request) -> web.Response:
    row = request.app[WARNINGS].get(unquote(request.match_info["uuid"]))
    return sync_response(warning_json(row))


async def put_warning(request: web.Request) -> web.Response:
    body: dict[str, Any] = decode_object(await request.read(), "api.WarningPut")
    status = body.get("status") if body.get("status") is not None else ""  # Go: null = zero
    status = string_map({"status": status}, "status", "WarningPut")["status"]
    request.app[WARNINGS].set_status(unquote(request.match_info["uuid"]), status)
    return sync_response({})


async def delete_warning(request: web.Request) -> web.Response:
    request.app[WARNINGS].delete(unquote(request.match_info["uuid"]))
    return sync_response({})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/1.0/warnings", list_warnings)
    router.add_get("/1.0/warnings/{uuid}", get_warning)
    router.add_put("/1.0/warnings/{uuid}", put_warning)
    router.add_patch("/1.0/warnings/{uuid}", put_warning)  # LXD: PATCH is PUT
    router.add_delete("/1.0/warnings/{uuid}", delete_warning)
