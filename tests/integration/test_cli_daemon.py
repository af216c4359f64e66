"""The CLI against the real daemon (`lxdproxy serve` run inside the lab's host netns), with real
traffic through a device added by `lxdproxy config device add`: the README flow."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.daemon import lxdproxy_argv, shutdown_daemon, start_daemon
from lab.traffic import roundtrip

pytestmark = pytest.mark.lab

@pytest.fixture
def daemon(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    proc, sock = start_daemon(lab, tmp_path)
    monkeypatch.setenv("LXDPROXY_SOCKET", sock)
    try:
        yield sock
    finally:
        shutdown_daemon(proc, Path(sock))  # devices and workers gone before the lab goes


def test_readme_flow_register_instance_and_forward_a_port(lab, daemon, lx):
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "127.0.0.1", 8000)

    rc, out, err = lx("instance", "add", "web1", "--pid", str(inst.pid),
                      "--nic", f"eth0,ipv4.address={inst.ipv4}")
    assert (rc, out, err) == (0, "Instance web1 added\n", "")
    rc, out, _ = lx("instance", "list")
    assert rc == 0 and "web1" in out and f"pid {inst.pid}" in out and inst.ipv4 in out

    rc, out, err = lx("config", "device", "add", "web1", "http", "proxy",
                      f"listen=tcp:{lab.host.ipv4}:8080", "connect=tcp:127.0.0.1:8000")
    assert (rc, out, err) == (0, "Device http added to web1\n", "")
    assert roundtrip(client, lab.host.ipv4, 8080, b"hello") == b"hello"

    rc, out, _ = lx("config", "device", "show", "web1")
    assert out == (
        "eth0:\n"
        f"  ipv4.address: {inst.ipv4}\n"
        "  nictype: bridged\n"
        "  type: nic\n"
        "http:\n"
        "  connect: tcp:127.0.0.1:8000\n"
        f"  listen: tcp:{lab.host.ipv4}:8080\n"
        "  type: proxy\n"
    )

    # Move the listener: set (lxc's key=value form), and the new port answers.
    rc, _, err = lx("config", "device", "set", "web1", "http",
                    f"listen=tcp:{lab.host.ipv4}:8081")
    assert (rc, err) == (0, "")
    assert roundtrip(client, lab.host.ipv4, 8081, b"moved") == b"moved"
    with pytest.raises(ConnectionRefusedError):
        roundtrip(client, lab.host.ipv4, 8080, b"old")

    rc, out, _ = lx("config", "device", "remove", "web1", "http")
    assert (rc, out) == (0, "Device http removed from web1\n")
    with pytest.raises(ConnectionRefusedError):
        roundtrip(client, lab.host.ipv4, 8081, b"gone")

    rc, out, _ = lx("instance", "remove", "web1")
    assert (rc, out) == (0, "Instance web1 removed\n")
    rc, out, _ = lx("instance", "list")
    assert "web1" not in out


def test_device_commands_and_lxc_errors(lab, daemon, lx):
    inst = lab.add_instance()
    assert lx("instance", "add", "c1", "--pid", str(inst.pid))[0] == 0
    listen = f"listen=tcp:{lab.host.ipv4}:9000"
    assert lx("config", "device", "add", "c1", "p", "proxy", listen,
              "connect=tcp:127.0.0.1:9")[0] == 0

    assert lx("config", "device", "add", "c1", "p", "proxy", listen,
              "connect=tcp:127.0.0.1:9") == (1, "", "Error: The device already exists\n")
    assert lx("config", "device", "get", "c1", "p", "connect") == (
        0, "tcp:127.0.0.1:9\n", "")
    assert lx("config", "device", "get", "c1", "p", "nope") == (0, "\n", "")
    assert lx("config", "device", "get", "c1", "q", "connect") == (
        1, "", "Error: Device doesn't exist\n")
    # Legacy "key value" form of set, then unset removes the key.
    assert lx("config", "device", "set", "c1", "p", "proxy_protocol", "true")[0] == 0
    assert lx("config", "device", "get", "c1", "p", "proxy_protocol")[1] == "true\n"
    assert '  proxy_protocol: "true"\n' in lx("config", "device", "show", "c1")[1]
    assert lx("config", "device", "unset", "c1", "p", "proxy_protocol")[0] == 0
    assert "proxy_protocol" not in lx("config", "device", "show", "c1")[1]
    assert lx("config", "device", "set", "c1", "p", "a=1", "broken") == (
        1, "", "Error: Invalid key=value configuration: broken\n")
    assert lx("config", "device", "add", "c1", "x", "proxy", "listen") == (
        1, "", 'Error: No value found in "listen"\n')
    # The daemon's validation error comes back in LXD's words; nothing changes.
    rc, _, err = lx("config", "device", "add", "c1", "bad", "proxy", listen.replace(
        "9000", "9001"), "connect=tcp:localhost:80")
    assert rc == 1
    assert err == ('Error: Invalid devices: Device validation failed for "bad": Invalid value '
                   'for device option "connect": Not an IP address "localhost"\n')
    assert lx("config", "device", "list", "c1") == (0, "p\n", "")
    assert lx("config", "device", "show", "nope") == (
        1, "", "Error: Instance not found\n")
    # --socket after the subcommand wins over the environment.
    rc, _, err = lx("config", "device", "list", "c1", "--socket", "/nonexistent/s")
    assert rc == 1 and err.startswith("Error: lxdproxy socket /nonexistent/s not found")
    assert lx("config", "device", "remove", "c1", "p", "q") == (
        1, "", "Error: Device doesn't exist\n")
    assert lx("config", "device", "remove", "c1", "p")[0] == 0
    assert lx("config", "device", "show", "c1") == (0, "{}\n", "")


def test_instance_add_errors(lab, daemon, lx):
    rc, _, err = lx("instance", "add", "n1", "--netns", "lxpX-does-not-exist")
    assert rc == 1 and err.startswith('Error: Invalid value for config "user.lxdproxy.netns"')
    rc, _, err = lx("instance", "add", "n1", "--pid", "1", "--nic", "eth0,ipv4.address")
    assert (rc, err) == (1, 'Error: Invalid --nic "eth0,ipv4.address": No value found in '
                            '"ipv4.address"\n')
    assert lx("instance", "remove", "n1") == (1, "", "Error: Instance not found\n")


def test_console_script_prints_error_without_traceback(tmp_path):
    env = {**os.environ, "LXDPROXY_SOCKET": str(tmp_path / "none")}
    proc = subprocess.run([*lxdproxy_argv(), "config", "device", "show", "c1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: lxdproxy socket {tmp_path / 'none'} not found: is the daemon "
                           "running?\n")
