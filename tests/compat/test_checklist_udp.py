"""LXD checklist parts F (udp -> udp), G (unix -> udp) and H (tcp -> udp), spec §7, through the
real ``lxc`` client: echo after add, after ``restart -f`` and after a connect port change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from lab.checklist import (
    PU,
    Daemon,
    P,
    echo_server,
    tcp_echo,
    udp_echo,
    unix_echo,
    until,
)

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]


MSG = b"checklist\n"
NAME = "proxyTester"


def test_f_udp_to_udp(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    d.add(NAME, "proxyDev", f"listen=udp:127.0.0.1:{PU}", "connect=udp:127.0.0.1:4321")
    assert udp_echo(lab, PU) == MSG

    d.restart(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    assert until(lambda: udp_echo(lab, PU), MSG) == MSG

    echo_server(lab, inst, "udp", "127.0.0.1", 1337, tag=True)
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", "udp:127.0.0.1:1337")
    assert udp_echo(lab, PU, b"new session\n") == b"1337:new session\n"
    d.remove(NAME, "proxyDev")


def test_g_unix_to_udp(lab: Any, checklist_daemon: Daemon, tmp_path: Path) -> None:
    d = checklist_daemon
    host_sock = tmp_path / "proxyTester.sock"
    inst = lab.add_instance()
    d.register(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    d.add(NAME, "proxyDev", f"listen=unix:{host_sock}", "connect=udp:127.0.0.1:4321",
          "bind=host")
    # a stream -> udp relay keeps the connection after our half-close (no EOF from a datagram
    # peer): read the answer, not an EOF
    assert unix_echo(host_sock, until_eof=False) == MSG

    host_sock.unlink()
    d.restart(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    assert until(lambda: unix_echo(host_sock, until_eof=False), MSG) == MSG

    echo_server(lab, inst, "udp", "127.0.0.1", 1337, tag=True)
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", "udp:127.0.0.1:1337")
    assert unix_echo(host_sock, until_eof=False) == b"1337:" + MSG
    d.remove(NAME, "proxyDev")
    assert not os.path.lexists(host_sock)


def test_h_tcp_to_udp(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    d.add(NAME, "proxyDev", f"listen=tcp:127.0.0.1:{P}", "connect=udp:127.0.0.1:4321",
          "bind=host")
    # the UDP reply arrives after our half-close: closing on the first EOF would lose it
    assert tcp_echo(lab, P, until_eof=False) == MSG

    d.restart(NAME, inst)
    echo_server(lab, inst, "udp", "127.0.0.1", 4321)
    assert until(lambda: tcp_echo(lab, P, until_eof=False), MSG) == MSG

    echo_server(lab, inst, "udp", "127.0.0.1", 1337, tag=True)
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", "udp:127.0.0.1:1337")
    assert tcp_echo(lab, P, until_eof=False) == b"1337:" + MSG
    d.remove(NAME, "proxyDev")
