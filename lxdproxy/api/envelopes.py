"""LXD response envelopes (all seven keys, as Go always emits them) and ETags.

Shapes are copied from LXD 5.0.2 captures (fixtures/rest/*.json).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from lxdproxy.errors import LxdError

JSON_HEADERS = {"Content-Type": "application/json"}
ERROR_HEADERS = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}


def _dumps(body: Any) -> str:
    # Go's encoder: compact, trailing newline.
    return json.dumps(body, separators=(",", ":")) + "\n"


def _envelope(type_: str, status: str, status_code: int, operation: str, error_code: int,
              error: str, metadata: Any) -> dict[str, Any]:
    # All seven keys, always, in the order LXD marshals api.ResponseRaw.
    return {"type": type_, "status": status, "status_code": status_code, "operation": operation,
            "error_code": error_code, "error": error, "metadata": metadata}


def sync_body(metadata: Any) -> dict[str, Any]:
    return _envelope("sync", "Success", 200, "", 0, "", metadata)


def async_body(operation_url: str, metadata: Any) -> dict[str, Any]:
    return _envelope("async", "Operation created", 100, operation_url, 0, "", metadata)


def error_body(message: str, code: int) -> dict[str, Any]:
    return _envelope("error", "", 0, "", code, message, None)


def sync_response(metadata: Any, *, etag: str | None = None) -> web.Response:
    headers = dict(JSON_HEADERS)
    if etag is not None:
        headers["ETag"] = f'"{etag}"'
    return web.Response(status=200, body=_dumps(sync_body(metadata)).encode(), headers=headers)


def async_response(operation_url: str, metadata: Any) -> web.Response:
    headers = dict(JSON_HEADERS)
    headers["Location"] = operation_url
    return web.Response(status=202, body=_dumps(async_body(operation_url, metadata)).encode(),
                        headers=headers)


def error_response(message: str, code: int) -> web.Response:
    return web.Response(status=code, body=_dumps(error_body(message, code)).encode(),
                        headers=ERROR_HEADERS)


def lxd_error_response(exc: LxdError) -> web.Response:
    return error_response(exc.message, exc.status)


def etag_of(record: dict[str, Any]) -> str:
    """Hash of the writable state, like LXD's ``[architecture, config, devices, ephemeral,
    profiles]``. Clients treat it as opaque; it only has to be stable and change with the state."""
    writable = [
        record.get("architecture", ""),
        record.get("config", {}),
        record.get("devices", {}),
        record.get("ephemeral", False),
        record.get("profiles", []),
    ]
    blob = json.dumps(writable, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def check_if_match(if_match: str | None, current_etag: str) -> None:
    """LXD's EtagCheck: no header, no check; quotes stripped; mismatch is 412."""
    if not if_match:
        return
    given = if_match.strip().strip('"')
    if given != current_etag:
        raise LxdError(
            f"ETag does not match: {current_etag} vs {given}. The configuration has been "
            "modified since this change began. Please retrieve the updated configuration "
            "before proceeding.",
            412,
        )
