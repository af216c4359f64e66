"""Request bodies of instance writes, decoded into the manager's types (Go struct decoding:
LXD's field types, with Go's ``encoding/json`` messages)."""

from __future__ import annotations

from typing import Any

from lxdproxy.api.request_json import decode_object, device_map, string_map
from lxdproxy.instances.model import InstanceUpdate
from lxdproxy.manager.writes import InstancePatch


def _description(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def put_body(raw: bytes) -> tuple[InstanceUpdate, dict[str, Any]]:
    """InstancePut: (the writable state, the raw body for its other fields such as restore)."""
    body = decode_object(raw)
    devices = device_map(body.get("devices"))
    return InstanceUpdate(
        config=string_map(body.get("config"), "config"),
        devices={k: v for k, v in devices.items() if v is not None},
        description=_description(body.get("description")),
    ), body


def patch_body(raw: bytes) -> InstancePatch:
    body = decode_object(raw)
    return InstancePatch(
        config=string_map(body.get("config"), "config"),
        devices=device_map(body.get("devices"), allow_null_devices=True),
        description=_description(body["description"]) if "description" in body else None,
    )


def create_body(raw: bytes) -> dict[str, Any]:
    """InstancesPost with ``config`` and ``devices`` as string maps."""
    body = decode_object(raw, "api.InstancesPost")
    devices = {k: v for k, v in device_map(body.get("devices")).items() if v is not None}
    return {**body, "devices": devices, "config": string_map(body.get("config"), "config")}
