"""The aiohttp application: LXD REST routes (spec lxd-rest-api.md §8) over the DeviceManager.

Every error becomes an LXD error envelope here, in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lxdproxy.api import certificates
from lxdproxy.api import warnings as warnings_api
from lxdproxy.api.envelopes import (
    async_response,
    check_if_match,
    error_response,
    etag_of,
    lxd_error_response,
    sync_response,
)
from lxdproxy.api.events import EventHub
from lxdproxy.api.instance_bodies import create_body, patch_body, put_body
from lxdproxy.api.instance_filter import matches, parse_filter
from lxdproxy.api.metrics import METRICS, DeviceCollector, get_metrics
from lxdproxy.api.operations import OperationRegistry, instance_resources
from lxdproxy.api.request_json import decode_object
from lxdproxy.api.server_info import server_info
from lxdproxy.errors import DeviceStartError, LxdError, NotFoundError, NotSupportedError
from lxdproxy.manager.service import DeviceManager, Precondition
from lxdproxy.warning_registry import WarningRegistry

log = logging.getLogger("lxdproxy.api")

MANAGER = web.AppKey("manager", DeviceManager)
OPS = web.AppKey("ops", OperationRegistry)
INFO = web.AppKey("info", dict)  # keyword arguments for server_info()
TRUST = web.AppKey("trust", object)  # lxdproxy.api.tls.TrustStore or None
EVENTS = web.AppKey("events", EventHub)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_PROFILE = {
    "config": {},
    "description": "Default LXD profile",
    "devices": {},
    "name": "default",
    "used_by": [],
    "project": "default",
}


@web.middleware
async def lxd_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        project = request.query.get("project")
        if project not in (None, "", "default"):
            # Projects are not advertised; only the default project exists.
            raise NotFoundError("Project not found")
        return await handler(request)
    except LxdError as exc:
        return lxd_error_response(exc)
    except web.HTTPMethodNotAllowed:
        return error_response("method not allowed", 405)
    except web.HTTPNotFound:
        return error_response("not found", 404)
    except web.HTTPException as exc:
        return error_response(exc.reason.lower(), exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(f"Internal error: {exc}", 500)


@web.middleware
async def tls_trust(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Over HTTPS, only clients whose certificate is in the trust store see anything; an
    untrusted client may read ``GET /1.0`` (``auth: untrusted``), as LXD allows."""
    trust = request.app.get(TRUST)
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if trust is None or ssl_object is None:
        return await handler(request)
    der = ssl_object.getpeercert(binary_form=True)
    trusted = bool(der) and trust.is_trusted(der)  # type: ignore[attr-defined]
    request[certificates.TRUSTED] = trusted
    if trusted:
        return await handler(request)
    if request.method == "GET" and request.path.rstrip("/") in ("", "/1.0"):
        return await handler(request)
    if certificates.untrusted_may_post(request):
        return await handler(request)
    return error_response("not authorized", 403)


def _recursion(request: web.Request) -> int:
    try:
        return int(request.query.get("recursion", "0"))
    except ValueError:
        return 0


def _operation(request: web.Request, description: str, name: str, event: str, *, err: str = "",
               metadata: dict[str, Any] | None = None) -> web.Response:
    """The finished operation of a write (202), its event, and the lifecycle ``event`` if it
    succeeded (LXD reports start failures of a write through the operation: 202 + Failure)."""
    op = request.app[OPS].finished(description, instance_resources(name), err=err,
                                   metadata=metadata)
    request.app[EVENTS].publish("operation", op.to_json())
    if not err:
        request.app[EVENTS].lifecycle(event, name)
    return async_response(op.url, op.to_json())


# -- server -----------------------------------------------------------------------------------

async def get_root(request: web.Request) -> web.Response:
    return sync_response(["/1.0"])


async def get_server(request: web.Request) -> web.Response:
    info = server_info(trusted=request.get(certificates.TRUSTED, True), **request.app[INFO])
    return sync_response(info)


# -- instances --------------------------------------------------------------------------------

def _if_match(request: web.Request) -> Precondition:
    header = request.headers.get("If-Match")
    return lambda record: check_if_match(header, etag_of(record))


async def _state(request: web.Request, name: str) -> dict[str, Any]:
    """The backend's state plus ``failed_devices`` (lxdproxy's): device -> why it is not
    running, for every device with an open start-failure warning (pylxd:
    ``instance.state().failed_devices``), and ``waiting_devices``: device -> why its NAT
    rules are not installed yet (user.lxdproxy.nat_dynamic without an address)."""
    state = await request.app[MANAGER].state(name)
    registry = request.app[warnings_api.WARNINGS]
    failed = registry.failed_devices(name)
    waiting = registry.waiting_devices(name)
    return {**state, "failed_devices": {f.device: f.message for f in failed},
            "waiting_devices": {w.device: w.message for w in waiting}}


async def _full(request: web.Request, name: str) -> dict[str, Any]:
    rec = await request.app[MANAGER].record(name)
    rec["backups"] = []
    rec["state"] = await _state(request, name)
    rec["snapshots"] = []
    return rec


async def list_instances(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    recursion = _recursion(request)
    wanted_type = request.query.get("instance-type")
    clauses = parse_filter(request.query.get("filter", ""))
    names = sorted(await manager.names())
    if recursion <= 0 and not wanted_type and not clauses:
        return sync_response([f"/1.0/instances/{n}" for n in names])
    records = []
    for name in names:
        try:
            rec = await (_full(request, name) if recursion >= 2 else manager.record(name))
        except NotFoundError:
            continue  # deleted meanwhile
        if wanted_type and rec.get("type") != wanted_type:
            continue
        if not matches(clauses, rec):
            continue
        records.append(rec)
    if recursion <= 0:
        return sync_response([f"/1.0/instances/{r['name']}" for r in records])
    return sync_response(records)


async def create_instance(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    body = create_body(await request.read())
    try:
        name = await manager.create(body)
        err = ""
    except DeviceStartError as exc:
        name, err = str(body.get("name")), exc.message
    return _operation(request, "Creating instance", name, "instance-created", err=err,
                      metadata={"entity_url": f"/1.0/instances/{name}"})


async def get_instance(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    rec = await manager.record(name)
    etag = etag_of(rec)
    if _recursion(request) >= 1:
        rec = await _full(request, name)
    return sync_response(rec, etag=etag)


async def put_instance(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    update, body = put_body(await request.read())
    if body.get("restore"):
        raise NotSupportedError("Snapshots are not supported by lxdproxy")
    try:
        await manager.put(name, update, _if_match(request))
        err = ""
    except DeviceStartError as exc:
        err = exc.message
    return _operation(request, "Updating instance", name, "instance-updated", err=err)


async def patch_instance(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    await manager.patch(name, patch_body(await request.read()), _if_match(request))
    request.app[EVENTS].lifecycle("instance-updated", name)
    return sync_response({})


async def delete_instance(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    await manager.delete(name)
    return _operation(request, "Deleting instance", name, "instance-deleted")


async def post_instance(request: web.Request) -> web.Response:
    await request.app[MANAGER].record(request.match_info["name"])  # 404 first, like LXD
    raise NotSupportedError("Renaming or migrating instances is not supported by lxdproxy")


async def get_instance_state(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    await manager.record(name)
    return sync_response(await _state(request, name))


STATE_DESCRIPTIONS = {"start": "Starting instance", "stop": "Stopping instance",
                      "restart": "Restarting instance"}
STATE_EVENTS = {"start": "instance-started", "stop": "instance-stopped",
                "restart": "instance-restarted"}


async def put_instance_state(request: web.Request) -> web.Response:
    """Local instances: stop/start/restart switch lxdproxy's handling (devices off/on); the
    process itself is never signalled. That is what ``lxc delete -f`` needs too."""
    manager = request.app[MANAGER]
    name = request.match_info["name"]
    body = decode_object(await request.read(), "api.InstanceStatePut")
    action = body.get("action") if isinstance(body.get("action"), str) else ""
    try:
        await manager.change_state(name, action)
        err = ""
    except DeviceStartError as exc:
        err = exc.message
    return _operation(request, STATE_DESCRIPTIONS[action], name, STATE_EVENTS[action], err=err)


# -- operations -------------------------------------------------------------------------------

async def list_operations(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    if _recursion(request) >= 1:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for op in ops.all():
            grouped.setdefault(op.status.text.lower(), []).append(op.to_json())
        return sync_response(grouped)
    return sync_response(ops.listing())


async def get_operation(request: web.Request) -> web.Response:
    return sync_response(request.app[OPS].get(request.match_info["id"]).to_json())


async def wait_operation(request: web.Request) -> web.Response:
    # Operations are born final, so there is never anything to wait for; ?timeout= is accepted.
    timeout = request.query.get("timeout", "-1")
    try:
        float(timeout)
    except ValueError:
        raise LxdError(f'strconv.Atoi: parsing "{timeout}": invalid syntax', 400) from None
    return sync_response(request.app[OPS].get(request.match_info["id"]).to_json())


async def delete_operation(request: web.Request) -> web.Response:
    # Only token operations (certificate add tokens) are ever running, so only they cancel.
    op = request.app[OPS].cancel(request.match_info["id"])
    request.app[EVENTS].publish("operation", op.to_json())
    return sync_response({})


# -- profiles (read-only: one empty default profile) -------------------------------------------

async def _default_profile(request: web.Request) -> dict[str, Any]:
    names = sorted(await request.app[MANAGER].names())
    return {**DEFAULT_PROFILE, "used_by": [f"/1.0/instances/{n}" for n in names]}


async def list_profiles(request: web.Request) -> web.Response:
    if _recursion(request) >= 1:
        return sync_response([await _default_profile(request)])
    return sync_response(["/1.0/profiles/default"])


async def get_profile(request: web.Request) -> web.Response:
    if request.match_info["name"] != "default":
        raise NotFoundError("Profile not found")
    profile = await _default_profile(request)
    return sync_response(profile, etag=etag_of({"config": {}, "devices": {}}))


async def write_profile(request: web.Request) -> web.Response:
    if request.match_info.get("name", "default") != "default":
        raise NotFoundError("Profile not found")
    raise NotSupportedError("Profiles are read-only in lxdproxy: put devices on the instance")


def create_app(manager: DeviceManager, ops: OperationRegistry | None = None, *,
               warnings: WarningRegistry, metrics: DeviceCollector,
               info: dict[str, Any] | None = None, trust: object | None = None) -> web.Application:
    """``info``: keyword arguments for server_info() (backend kind, TLS certificate, addresses)."""
    app = web.Application(middlewares=[lxd_errors, tls_trust], client_max_size=4 * 1024 * 1024)
    app[MANAGER] = manager
    app[warnings_api.WARNINGS] = warnings
    app[METRICS] = metrics
    app[OPS] = ops or OperationRegistry()
    app[INFO] = dict(info or {})
    app[TRUST] = trust
    app[EVENTS] = EventHub()

    async def close_events(app: web.Application) -> None:
        await app[EVENTS].close()

    app.on_shutdown.append(close_events)
    r = app.router
    r.add_get("/", get_root)
    r.add_get("/1.0", get_server)
    r.add_get("/1.0/", get_server)
    r.add_get("/1.0/instances", list_instances)
    r.add_post("/1.0/instances", create_instance)
    r.add_get("/1.0/instances/{name}", get_instance)
    r.add_put("/1.0/instances/{name}", put_instance)
    r.add_patch("/1.0/instances/{name}", patch_instance)
    r.add_delete("/1.0/instances/{name}", delete_instance)
    r.add_post("/1.0/instances/{name}", post_instance)
    r.add_get("/1.0/instances/{name}/state", get_instance_state)
    r.add_put("/1.0/instances/{name}/state", put_instance_state)
    r.add_get("/1.0/events", app[EVENTS].serve)
    r.add_get("/1.0/operations", list_operations)
    r.add_get("/1.0/operations/{id}", get_operation)
    r.add_delete("/1.0/operations/{id}", delete_operation)
    r.add_get("/1.0/operations/{id}/wait", wait_operation)
    r.add_get("/1.0/profiles", list_profiles)
    r.add_post("/1.0/profiles", write_profile)
    r.add_get("/1.0/profiles/{name}", get_profile)
    for method in ("PUT", "PATCH", "POST", "DELETE"):
        r.add_route(method, "/1.0/profiles/{name}", write_profile)
    warnings_api.add_routes(r)
    certificates.add_routes(app, certificates.CertificateApi(
        trust, app[OPS], app[EVENTS], app[INFO]))  # type: ignore[arg-type]
    r.add_get("/1.0/metrics", get_metrics)
    return app
