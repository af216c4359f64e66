"""The real daemon in lab.host against hostile names and bodies (issue 12, failures 3 and 4):
each gets a 4xx, nothing is stored, the log holds no traceback and no forged line, and the
state directory and database are private."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import RunningDaemon

pytestmark = pytest.mark.lab


def http(sock_path: Path, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One raw HTTP/1.1 request over the API socket (the body is sent as given)."""
    head = [f"{method} {path} HTTP/1.1", "Host: lxd", "Connection: close",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(sock_path))
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    reply_headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), json.loads(payload or b"{}"), reply_headers


def nested(depth: int) -> bytes:
    return b'{"devices":' + b"[" * depth + b"]" * depth + b"}"


HOSTILE_PUTS = [
    ("100,000-deep JSON", nested(100_000), "exceeded max depth"),
    ("5,000-digit number", b'{"description": ' + b"7" * 5000 + b"}",
     "json: cannot unmarshal number 7777777777777777... (5000 characters) into Go value of "
     "type float64"),
    ("NaN", b'{"description": NaN}', "invalid character 'N' looking for beginning of value"),
    ("Infinity", b'{"x": [1, Infinity]}', "invalid character 'I' looking for beginning of value"),
]

HOSTILE_DEVICE_NAMES = [
    ("..", 'Invalid devices: Device validation failed for "..": Name must not start with "." '
           "character"),
    ("a\nlxdproxy: ERROR forged line", 'Invalid devices: Device validation failed for '
     '"a\\nlxdproxy: ERROR forged line": Name can only contain alphanumeric, forward slash, '
     "hyphen, colon, underscore and full stop characters"),
    ("x" * 10_000, "Invalid devices: The maximum device name length is 64 characters"),
]


def test_hostile_inputs_get_4xx_change_nothing_and_log_no_traceback(lab: Any,
                                                                    tmp_path: Path) -> None:
    inst = lab.add_instance()
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    try:
        status, _, _ = http(daemon.socket, "POST", "/1.0/instances", json.dumps({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)}}).encode())
        assert status == 202
        status, before, headers = http(daemon.socket, "GET", "/1.0/instances/c1")
        etag = headers["ETag"]

        for what, body, message in HOSTILE_PUTS:
            for method in ("PUT", "PATCH"):
                status, reply, _ = http(daemon.socket, method, "/1.0/instances/c1", body)
                assert (status, reply.get("error"), reply.get("type")) == (400, message, "error"), what
        for name, message in HOSTILE_DEVICE_NAMES:
            body = json.dumps({"devices": {name: {"type": "proxy", "listen": "tcp:198.18.0.1:7000",
                                                  "connect": "tcp:127.0.0.1:7000"}}}).encode()
            status, reply, _ = http(daemon.socket, "PATCH", "/1.0/instances/c1", body)
            assert (status, reply["error"]) == (400, message)
        for name, message in [
            ("x\n", "Invalid instance name: Name can only contain alphanumeric and hyphen "
                    "characters"),
            ("a\nlxdproxy: ERROR forged", "Invalid instance name: Name can only contain "
                                          "alphanumeric and hyphen characters"),
        ]:
            status, reply, _ = http(daemon.socket, "POST", "/1.0/instances", json.dumps({
                "name": name, "config": {"user.lxdproxy.pid": str(inst.pid)}}).encode())
            assert (status, reply["error"]) == (400, message)
        status, reply, _ = http(daemon.socket, "POST", "/1.0/instances", json.dumps({
            "name": "c2", "config": {"user.lxdproxy.pid": "١٢٣"}}).encode())
        assert (status, reply["error"]) == (
            400, 'Invalid value for config "user.lxdproxy.pid": "١٢٣" is not a process ID')
        status, _, _ = http(daemon.socket, "GET", "/1.0/instances/a%0Alxdproxy:%20ERROR%20forged")
        assert status == 404
        status, reply, _ = http(daemon.socket, "PUT", "/1.0/instances/c1", b" " * (50 << 20))
        assert status == 413

        status, after, headers = http(daemon.socket, "GET", "/1.0/instances/c1")
        assert (after["metadata"], headers["ETag"]) == (before["metadata"], etag)
        assert http(daemon.socket, "GET", "/1.0/instances")[1]["metadata"] == ["/1.0/instances/c1"]

        # Failure 3: the database is readable by root only, and so is the directory listing.
        state = daemon.state_dir
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o711
        for name in ("lxdproxy.db", "lxdproxy.db-wal", "lxdproxy.db-shm"):
            assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600, name
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert all(line.startswith("lxdproxy: ") for line in log.splitlines()), log
    assert "forged" not in log or "\\n" in log


def test_open_modes_of_an_existing_state_dir_are_fixed_at_start(lab: Any, tmp_path: Path) -> None:
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    daemon.stop()
    state = daemon.state_dir
    os.chmod(state, 0o755)
    os.chmod(state / "lxdproxy.db", 0o644)
    daemon.start()
    try:
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o711
        assert stat.S_IMODE(os.stat(state / "lxdproxy.db").st_mode) == 0o600
    finally:
        daemon.stop()
    assert (f"{state / 'lxdproxy.db'} had mode 0644, open to more than root: changed to 0600"
            in daemon.log.read_text())
