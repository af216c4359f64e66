"""The real ``lxc`` 5.0.2 client against the real daemon (in lab.host), with traffic."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import RunningDaemon
from lab.traffic import eventually_roundtrip, roundtrip

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

HOST = "198.18.0.1"


@pytest.fixture
def daemon(running_daemon: RunningDaemon) -> RunningDaemon:
    return running_daemon


@pytest.fixture
def lxc(daemon: RunningDaemon, tmp_path: Path) -> Any:
    env = daemon.env(tmp_path / "lxc-conf")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def register(daemon: RunningDaemon, inst: Any) -> None:
    body = {"name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)},
            "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4}}}
    out = subprocess.run(["curl", "-sS", "--unix-socket", str(daemon.socket), "-X", "POST",
                          "-d", json.dumps(body), "http://lxd/1.0/instances"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["metadata"]["status"] == "Success"


def test_lxc_config_device_commands(lab: Any, daemon: RunningDaemon, lxc: Any) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    register(daemon, inst)

    out = lxc("config", "device", "add", "c1", "web", "proxy",
              f"listen=tcp:{HOST}:7200", "connect=tcp:127.0.0.1:9000")
    assert out.stdout.strip() == "Device web added to c1"
    assert roundtrip(lab.host, HOST, 7200) == b"ping"

    shown = lxc("config", "device", "show", "c1").stdout
    assert "web:\n  connect: tcp:127.0.0.1:9000\n  listen: tcp:198.18.0.1:7200\n  type: proxy" \
        in shown
    assert lxc("config", "device", "get", "c1", "web", "listen").stdout.strip() == \
        f"tcp:{HOST}:7200"

    lxc("config", "device", "set", "c1", "web", f"listen=tcp:{HOST}:7201")
    assert eventually_roundtrip(lab.host, HOST, 7201) == b"ping"
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7200)

    lxc("config", "device", "set", "c1", "web", "user.note=x")
    assert lxc("config", "device", "get", "c1", "web", "user.note").stdout.strip() == "x"
    lxc("config", "device", "unset", "c1", "web", "user.note")
    assert lxc("config", "device", "get", "c1", "web", "user.note").stdout.strip() == ""
    assert roundtrip(lab.host, HOST, 7201) == b"ping"

    # rejected: LXD's message, nothing changed
    before = lxc("config", "show", "c1").stdout
    bad = lxc("config", "device", "add", "c1", "bad", "proxy", f"listen=tcp:{HOST}:7202",
              "connect=tcp:localhost:9000", ok=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith(
        'Error: Invalid devices: Device validation failed for "bad": Invalid value for device '
        'option "connect": Not an IP address "localhost"')
    assert lxc("config", "show", "c1").stdout == before

    # override copies a profile device; our only profile ("default") has none
    over = lxc("config", "device", "override", "c1", "root", "size=1GB", ok=False)
    assert "The profile device doesn't exist" in over.stderr

    out = lxc("config", "device", "remove", "c1", "web")
    assert out.stdout.strip() == "Device web removed from c1"
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7201)
    assert "web" not in lxc("config", "device", "list", "c1").stdout


def test_lxc_info_and_operations(lab: Any, daemon: RunningDaemon, lxc: Any) -> None:
    inst = lab.add_instance()
    register(daemon, inst)
    info = lxc("info", "c1").stdout
    assert "Status: RUNNING" in info and f"PID: {inst.pid}" in info
    assert f"inet:  {inst.ipv4}/24 (global)" in info
    assert "Creating instance" in lxc("operation", "list").stdout
    listed = lxc("list", "--format", "csv").stdout
    assert listed.startswith(f"c1,RUNNING,{inst.ipv4} (eth0),")
    assert lxc("list", "status=running", "--format", "csv").stdout == listed
    assert lxc("list", "status=stopped", "--format", "csv").stdout == ""
    assert lxc("list", "user.lxdproxy.pid=" + str(inst.pid), "--format", "csv").stdout == listed
    start = lxc("start", "c1", ok=False)
    assert start.returncode == 1 and "The instance is already running" in start.stderr
    lxc("stop", "c1")
    assert lxc("list", "--format", "csv").stdout.startswith("c1,STOPPED,")
    lxc("start", "c1")
    assert lxc("list", "--format", "csv").stdout.startswith("c1,RUNNING,")
    lxc("delete", "-f", "c1")  # a forced stop, then DELETE
    assert lxc("list", "--format", "csv").stdout == ""
    assert inst.run(["true"]).returncode == 0  # the registered process lives on


def test_lxc_unset_removes_the_key(lab: Any, daemon: RunningDaemon, lxc: Any) -> None:
    # LXD stores no empty value: after `unset` the key is gone (issue 13).
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    register(daemon, inst)
    lxc("config", "device", "add", "c1", "web", "proxy", f"listen=tcp:{HOST}:7210",
        "connect=tcp:127.0.0.1:9000", "bind=host")
    assert "bind: host" in lxc("config", "device", "show", "c1").stdout
    lxc("config", "device", "unset", "c1", "web", "bind")
    shown = lxc("config", "device", "show", "c1").stdout
    assert "bind" not in shown and "listen: tcp:198.18.0.1:7210" in shown
    lxc("config", "set", "c1", "user.note", "x")
    lxc("config", "unset", "c1", "user.note")
    assert "user.note" not in lxc("config", "show", "c1").stdout
    assert roundtrip(lab.host, HOST, 7210) == b"ping"
