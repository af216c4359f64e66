"""A small synchronous client for the daemon's unix socket (stdlib only, so the CLI starts fast).

It speaks the LXD envelope: errors come back as ``ApiError`` carrying the server's ``error``
text, async replies are waited on until the operation is final (like ``op.Wait()`` in lxc).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

DEFAULT_SOCKET = "/var/lib/lxdproxy/unix.socket"
SOCKET_ENV = "LXDPROXY_SOCKET"


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def path_segment(name: str) -> str:
    """An instance/certificate name as one URL path segment."""
    return quote(name, safe="")


class ApiError(Exception):
    """What the user sees after ``Error: `` (the server's message, unchanged)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def metadata(self) -> Any:
        return self.body.get("metadata")

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("lxdproxy", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    def __init__(self, socket_path: str | None = None, timeout: float = 120.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:
        """One request; raises ApiError for transport failures and LXD error envelopes."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        send_headers = {"User-Agent": "lxdproxy-cli", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            send_headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=send_headers)
            raw = conn.getresponse()
            payload = raw.read()
            status = raw.status
            reply_headers = {k.lower(): v for k, v in raw.getheaders()}
        except FileNotFoundError as exc:
            raise ApiError(f"lxdproxy socket {self.socket_path} not found: is the daemon running?"
                           ) from exc
        except PermissionError as exc:
            raise ApiError(f"Permission denied on {self.socket_path}") from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ApiError(f"Failed to talk to lxdproxy at {self.socket_path}: {reason}") from exc
        finally:
            conn.close()
        try:
            envelope = json.loads(payload) if payload else {}
        except ValueError as exc:
            raise ApiError(f"Invalid reply from lxdproxy ({status}): "
                           f"{payload[:200].decode(errors='replace')}", status) from exc
        if not isinstance(envelope, dict):
            raise ApiError(f"Invalid reply from lxdproxy ({status})", status)
        if status >= 400 or envelope.get("type") == "error":
            raise ApiError(str(envelope.get("error") or f"HTTP {status}"), status)
        return Response(status, reply_headers, envelope)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def write(self, method: str, path: str, body: Any = None,
              etag: str | None = None) -> Response:
        """PUT/POST/PATCH/DELETE and wait for the operation it starts, if any."""
        headers = {"If-Match": etag} if etag else None
        response = self.request(method, path, body, headers)
        if response.body.get("type") == "async":
            self.wait(response)
        return response

    def wait(self, response: Response) -> dict[str, Any]:
        """Wait until the operation of an async reply is final; raise its ``err`` on failure."""
        op = response.metadata if isinstance(response.metadata, dict) else {}
        url = str(response.body.get("operation") or "")
        # A 202 whose operation is already final needs no round trip (what lxc relies on too).
        if op.get("status_code", 0) < 200:
            if not url:
                raise ApiError("Invalid reply from lxdproxy: async reply without an operation")
            op_id = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            while True:
                op = self.get(f"/1.0/operations/{path_segment(op_id)}/wait?timeout=30").metadata
                if not isinstance(op, dict) or op.get("status_code", 0) >= 200:
                    break
        op = op if isinstance(op, dict) else {}
        if op.get("status") == "Failure" or not 200 <= op.get("status_code", 200) < 300:
            raise ApiError(str(op.get("err") or op.get("status") or "Operation failed"))
        return op
