"""LXD checklist parts C (unix -> unix), D (tcp -> unix) and E (unix -> tcp), spec §7, through the
real ``lxc`` client: echo after add, after ``restart -f``, after a connect change, and the host
socket removed with the device (C4)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from lab.checklist import (
    Daemon,
    P,
    echo_server,
    refused,
    tcp_echo,
    unix_echo,
    until,
)

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]


MSG = b"checklist\n"
NAME = "proxyTester"


def test_c_unix_to_unix(lab: Any, checklist_daemon: Daemon, tmp_path: Path) -> None:
    d = checklist_daemon
    host_sock = tmp_path / "proxyTester.sock"
    inst = lab.add_instance()
    d.register(NAME, inst)

    # C1: ids on the host socket, and the connector drops to 1234:1234 inside the instance
    echo_server(lab, inst, "unix", f"/tmp/{NAME}.sock")
    d.add(NAME, "proxyDev", f"listen=unix:{host_sock}", "uid=1234", "gid=1234",
          "security.uid=1234", "security.gid=1234", f"connect=unix:/tmp/{NAME}.sock",
          "bind=host")
    assert unix_echo(host_sock) == MSG
    st = host_sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and (st.st_uid, st.st_gid) == (1234, 1234)
    assert stat.S_IMODE(st.st_mode) == 0o644  # LXD passes mode 0644 when unset

    # C2: host socket removed, instance restarted, new server -> socket re-created
    host_sock.unlink()
    d.restart(NAME, inst)
    echo_server(lab, inst, "unix", f"/tmp/{NAME}.sock")
    assert until(lambda: unix_echo(host_sock), MSG) == MSG

    # C3: host socket removed, connect moved to a new server socket
    host_sock.unlink()
    echo_server(lab, inst, "unix", f"/tmp/{NAME}-2.sock")
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", f"unix:/tmp/{NAME}-2.sock")
    assert unix_echo(host_sock) == MSG

    # C4: removal deletes the host socket (bind=host, spec §4.6)
    d.remove(NAME, "proxyDev")
    assert not os.path.lexists(host_sock)


def test_d_tcp_to_unix(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register(NAME, inst)
    echo_server(lab, inst, "unix", f"/tmp/{NAME}.sock")
    d.add(NAME, "proxyDev", f"listen=tcp:127.0.0.1:{P}", f"connect=unix:/tmp/{NAME}.sock",
          "bind=host")
    assert tcp_echo(lab, P) == MSG

    d.restart(NAME, inst)
    echo_server(lab, inst, "unix", f"/tmp/{NAME}.sock")
    assert until(lambda: tcp_echo(lab, P), MSG) == MSG

    echo_server(lab, inst, "unix", f"/tmp/{NAME}-2.sock", tag=True)
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", f"unix:/tmp/{NAME}-2.sock")
    assert tcp_echo(lab, P).endswith(MSG) and tcp_echo(lab, P) != MSG  # the tagged server
    d.remove(NAME, "proxyDev")
    assert refused(lab, P)


def test_e_unix_to_tcp(lab: Any, checklist_daemon: Daemon, tmp_path: Path) -> None:
    d = checklist_daemon
    host_sock = tmp_path / "proxyTester.sock"
    inst = lab.add_instance()
    d.register(NAME, inst)
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    d.add(NAME, "proxyDev", f"listen=unix:{host_sock}", "connect=tcp:127.0.0.1:4321",
          "bind=host")
    assert unix_echo(host_sock) == MSG

    host_sock.unlink()
    d.restart(NAME, inst)
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    assert until(lambda: unix_echo(host_sock), MSG) == MSG

    host_sock.unlink()
    echo_server(lab, inst, "tcp", "127.0.0.1", 1337, tag=True)
    d.lxc("config", "device", "set", NAME, "proxyDev", "connect", "tcp:127.0.0.1:1337")
    assert unix_echo(host_sock) == b"1337:" + MSG
    d.remove(NAME, "proxyDev")
    assert not os.path.lexists(host_sock)
