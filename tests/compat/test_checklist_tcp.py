"""LXD checklist part B1-B4 (spec §7): tcp -> tcp through the real ``lxc`` client, with a
restart of the instance and a live connect change, then a multi-port device with half-close."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from lab.checklist import (
    P2,
    P3,
    Daemon,
    P,
    echo_server,
    eventually,
    refused,
    stop_servers,
    tcp_echo,
    until,
)

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]


MSG = b"checklist\n"


def test_b1_to_b4_tcp(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register("proxyTester", inst)

    # B1
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    d.add("proxyTester", "proxyDev", f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321",
          "bind=host")
    assert tcp_echo(lab, P) == MSG
    shown = d.lxc("config", "device", "show", "proxyTester").stdout
    assert (f"proxyDev:\n  bind: host\n  connect: tcp:127.0.0.1:4321\n"
            f"  listen: tcp:127.0.0.1:{P}\n  type: proxy\n") in shown

    # B2: restart -f, new server -> the device is re-created against the new init. lxdproxy
    # does not own the process: it restarts by itself, then the instance is re-anchored on the
    # new PID (lxdproxy/instances/local.py; the error of `lxc start` says so)
    d.restart("proxyTester", inst)
    server = echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    assert until(lambda: tcp_echo(lab, P), MSG) == MSG
    assert d.state("proxyTester")["pid"] == inst.pid
    # and `lxc restart -f` of a live instance: devices off and on again, the process untouched
    d.lxc("restart", "-f", "proxyTester")
    assert tcp_echo(lab, P, retry=False) == MSG  # up again when lxc returns, as with LXD
    assert inst.proc.poll() is None and d.state("proxyTester")["pid"] == inst.pid

    # B3: live connect change
    echo_server(lab, inst, "tcp", "127.0.0.1", 1337, tag=True)
    d.lxc("config", "device", "set", "proxyTester", "proxyDev", "connect", "tcp:127.0.0.1:1337")
    assert tcp_echo(lab, P) == b"1337:" + MSG

    # B4: three listen ports mapped by position onto three servers; half-close both ways
    d.remove("proxyTester", "proxyDev")
    assert refused(lab, P)
    server.kill()
    server.wait()
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321, 4322, 4323, tag=True)
    d.add("proxyTester", "proxyDev", f"listen=tcp:127.0.0.1:{P},{P2},{P3}",
          "connect=tcp:127.0.0.1:4321-4323", "bind=host")
    for port, target in ((P, 4321), (P2, 4322), (P3, 4323)):
        assert tcp_echo(lab, port) == f"{target}:".encode() + MSG
    # `nc -N`: the server answers only after it saw our EOF, then closes
    echo_server(lab, inst, "tcp", "127.0.0.1", 4324, reply_after_eof=True)
    d.lxc("config", "device", "set", "proxyTester", "proxyDev", "connect=tcp:127.0.0.1:4324")
    assert eventually(lambda: not refused(lab, P3))
    assert tcp_echo(lab, P3) == MSG
    d.remove("proxyTester", "proxyDev")
    assert all(refused(lab, port) for port in (P, P2, P3))


def test_b2_restart_f_after_process_restart_then_follow_the_advice(
        lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register("proxyTester", inst)
    d.add("proxyTester", "proxyDev", f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321",
          "bind=host")
    old_pid = inst.pid
    stop_servers(inst)
    inst.restart()
    err = d.lxc_error("restart", "-f", "proxyTester")
    assert err == (f'Error: The instance\'s process or network namespace ("{old_pid}") is gone: '
                   'set "user.lxdproxy.pid" or "user.lxdproxy.netns" to its new one')
    d.lxc("config", "set", "proxyTester", "user.lxdproxy.pid", str(inst.pid))
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    assert until(lambda: d.state("proxyTester")["status"], "Running", timeout=3) == "Running"
    assert until(lambda: tcp_echo(lab, P), MSG, timeout=3) == MSG
