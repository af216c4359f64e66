"""The checklist's device operations through pylxd 2.4 (``Client(endpoint=<socket>)``), and
start-failure texts through both clients, compared with LXD 5.0.2's exact strings."""

from __future__ import annotations

import shutil
import socket
from typing import Any

import pytest
from pylxd import Client
from pylxd.exceptions import LXDAPIException

from lab.checklist import (
    P2,
    Daemon,
    P,
    echo_server,
    refused,
    tcp_echo,
    until,
)

pytestmark = [pytest.mark.lab]


MSG = b"checklist\n"


def proxy(listen: str, connect: str, **extra: str) -> dict[str, str]:
    return {"type": "proxy", "listen": listen, "connect": connect, "bind": "host", **extra}


def test_pylxd_checklist_b1_b3_a1(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register("proxyTester", inst)
    client = Client(endpoint=str(d.socket))
    c = client.instances.get("proxyTester")
    assert c.state().pid == inst.pid

    # B1 via save()
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    c.devices["proxyDev"] = proxy(f"tcp:127.0.0.1:{P}", "tcp:127.0.0.1:4321")
    c.save(wait=True)
    assert tcp_echo(lab, P) == MSG

    # A1 via save(): LXDAPIException with LXD's message, nothing changed
    c = client.instances.get("proxyTester")
    c.devices["bad"] = proxy(f"tcp:127.0.0.1:{P2}", "tcp:localhost:4321")
    with pytest.raises(LXDAPIException) as err:
        c.save(wait=True)
    assert str(err.value) == ('Invalid devices: Device validation failed for "bad": Invalid '
                              'value for device option "connect": Not an IP address "localhost"')
    assert set(client.instances.get("proxyTester").devices) == {"eth0", "proxyDev"}
    assert refused(lab, P2)

    # B2: restart, then the new PID through the API (local instances are anchored on it)
    d.restart("proxyTester", inst)
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    assert until(lambda: tcp_echo(lab, P), MSG) == MSG
    assert client.instances.get("proxyTester").state().pid == inst.pid

    # B3: a live change of connect
    echo_server(lab, inst, "tcp", "127.0.0.1", 1337, tag=True)
    c = client.instances.get("proxyTester")
    c.devices["proxyDev"]["connect"] = "tcp:127.0.0.1:1337"
    c.save(wait=True)
    assert tcp_echo(lab, P) == b"1337:" + MSG

    # removal
    c = client.instances.get("proxyTester")
    del c.devices["proxyDev"]
    c.save(wait=True)
    assert refused(lab, P)


def _busy(lab: Any, port: int) -> socket.socket:
    s = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


# LXD 5.0.2: fixtures/lxd-5.0.2/put-start-failure-c1-wait.json gives the prefix and the forkproxy
# part ("Error occurred when starting proxy device: Error: ..."); spec §4.1 the listen failure.
BUSY = ('Failed to start device "proxyDev": Error occurred when starting proxy device: '
        f"Error: Failed listening on 127.0.0.1:{P}: listen tcp 127.0.0.1:{P}: bind: address "
        "already in use")


@pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")
def test_start_failure_text_busy_port(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register("proxyTester", inst)
    blocker = _busy(lab, P)
    try:
        err = d.lxc_error("config", "device", "add", "proxyTester", "proxyDev", "proxy",
                          f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321", "bind=host")
        assert err == "Error: " + BUSY
        c = Client(endpoint=str(d.socket)).instances.get("proxyTester")
        c.devices["proxyDev"] = proxy(f"tcp:127.0.0.1:{P}", "tcp:127.0.0.1:4321")
        with pytest.raises(LXDAPIException) as exc:
            c.save(wait=True)
        assert str(exc.value) == BUSY
    finally:
        blocker.close()
    assert "proxyDev" not in d.lxc("config", "device", "list", "proxyTester").stdout
