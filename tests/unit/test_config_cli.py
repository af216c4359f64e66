"""`lxdproxy validate` end to end, through a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lxdproxy.cli", "validate", *args],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_acceptance_hostname() -> None:
    result = run("listen=tcp:127.0.0.1:80", "connect=tcp:localhost:80")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b'Invalid value for device option "connect": Not an IP address "localhost"\n'


def test_valid_device_json() -> None:
    result = run(
        "type=proxy",
        "listen=tcp:[::1]:80,81",
        "connect=tcp:127.0.0.1:8080",
        "user.lxdproxy.proxy_protocol=v2",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    doc = json.loads(result.stdout)
    assert doc["listen"] == {"type": "tcp", "address": "::1", "ports": [80, 81], "abstract": False}
    assert doc["connect"]["ports"] == [8080]
    assert doc["port_map"] == [[80, 8080], [81, 8080]]
    assert doc["proxy_protocol"] == "v2"
    assert doc["mode"] == "0644"
    assert (doc["bind"], doc["nat"], doc["uid"], doc["security_uid"]) == ("host", False, None, 0)


def test_unix_mode_is_octal_text() -> None:
    result = run("listen=unix:/tmp/x.sock", "connect=unix:@y", "mode=600", "uid=5", "bind=guest")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["mode"], doc["uid"], doc["bind"]) == ("0600", 5, "instance")
    assert doc["connect"] == {"type": "unix", "address": "@y", "ports": [], "abstract": True}


def test_instance_type_and_name() -> None:
    result = run("--instance-type", "virtual-machine", "--name", "proxyDev",
                 "listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80")
    assert result.returncode == 1
    assert result.stderr == (
        b'Invalid devices: Device validation failed for "proxyDev": '
        b"Only NAT mode is supported for proxies on VM instances\n"
    )


def test_forward_address_option() -> None:
    result = run("--forward-address", "192.0.2.2", "listen=tcp:192.0.2.2:80",
                 "connect=tcp:192.0.2.3:80")
    assert result.stderr == b'Listen address "192.0.2.2" conflicts with existing network forward\n'


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["listen"], 2),
        (["listen=tcp:1.2.3.4:1", "listen=tcp:1.2.3.4:2"], 2),
        (["--instance-type", "profile", "listen=x"], 2),
        (["--bogus"], 2),
        ([], 1),
        (["=x"], 1),
        (["=", "=="], 2),
        ([b"listen=tcp:\xff\xfe:1", b"connect=\x01"], 1),
        (["listen=tcp:1.2.3.4:1-99999999999999999999", "connect=tcp:1.2.3.4:1"], 1),
        (["listen=unix:\x7f", "connect=unix:" + "\u2028" * 50], 1),
    ],
)
def test_bad_input_never_tracebacks(args: list, code: int) -> None:
    result = run(*args)
    assert result.returncode == code
    assert b"Traceback" not in result.stderr
    assert result.stderr.strip()


def test_non_utf8_error_text_is_go_quoted() -> None:
    result = run(b"listen=tcp:[\xff]:1", "connect=tcp:1.2.3.4:1")
    assert result.stderr == b'Invalid value for device option "listen": Not an IP address "\\xff"\n'
