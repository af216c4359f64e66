"""pylxd 2.4 against the real daemon (running in lab.host), with traffic through the devices."""

from __future__ import annotations

from typing import Any

import pytest
from pylxd import Client
from pylxd.exceptions import LXDAPIException, NotFound

from lab.daemon import RunningDaemon
from lab.traffic import eventually_roundtrip, roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


@pytest.fixture
def daemon(running_daemon: RunningDaemon) -> RunningDaemon:
    return running_daemon


def proxy(port: int, target: int = 9000) -> dict[str, str]:
    return {"type": "proxy", "listen": f"tcp:{HOST}:{port}", "connect": f"tcp:127.0.0.1:{target}"}


def test_pylxd_register_edit_save_patch_state_delete(lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    client = Client(endpoint=str(daemon.socket))
    assert client.host_info["environment"]["server_clustered"] is False

    created = client.instances.create({
        "name": "c1", "source": {"type": "none"},
        "config": {"user.lxdproxy.pid": str(inst.pid)},
        "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
                    "web": proxy(7100)},
    }, wait=True)
    assert created.name == "c1"
    assert roundtrip(lab.host, HOST, 7100) == b"ping"
    assert client.instances.exists("c1") and not client.instances.exists("nope")
    assert [i.name for i in client.instances.all()] == ["c1"]

    c1 = client.instances.get("c1")
    assert c1.status == "Running" and c1.type == "container"
    assert c1.state().pid == inst.pid
    assert inst.ipv4 in [a["address"] for a in c1.state().network["eth0"]["addresses"]]

    # save(): full PUT including expanded_* (ignored by the server)
    c1.devices["web2"] = proxy(7101)
    c1.save(wait=True)
    assert roundtrip(lab.host, HOST, 7101) == b"ping"
    assert "web2" in client.instances.get("c1").expanded_devices

    # patch(): merge by name, null deletes
    c1 = client.instances.get("c1")
    c1.patch({"devices": {"web2": None, "web3": proxy(7102)}})
    assert set(client.instances.get("c1").devices) == {"eth0", "web", "web3"}
    assert roundtrip(lab.host, HOST, 7102) == b"ping"
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7101)

    # a rejected save changes nothing
    before = client.api.instances["c1"].get().json()
    c1 = client.instances.get("c1")
    c1.devices["bad"] = {"type": "proxy", "listen": f"tcp:{HOST}:7103",
                         "connect": "tcp:localhost:80"}
    with pytest.raises(LXDAPIException) as err:
        c1.save(wait=True)
    assert str(err.value) == ('Invalid devices: Device validation failed for "bad": Invalid '
                              'value for device option "connect": Not an IP address "localhost"')
    assert client.api.instances["c1"].get().json() == before

    # stop/start switch the devices off and on (the process is never signalled)
    c1.stop(wait=True)
    assert client.instances.get("c1").status == "Stopped"
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7100)
    c1.start(wait=True)
    assert client.instances.get("c1").status == "Running"
    assert roundtrip(lab.host, HOST, 7100) == b"ping"
    with pytest.raises(LXDAPIException, match="not supported"):
        c1.freeze(wait=True)

    # operations stay readable after the fact
    ops = client.api.operations.get().json()["metadata"]
    assert ops["success"]

    client.instances.get("c1").delete(wait=True)
    with pytest.raises(NotFound):
        client.instances.get("c1")
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7100)


def test_pylxd_start_failure_rolls_back(lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    client = Client(endpoint=str(daemon.socket))
    client.instances.create({"name": "c1", "source": {"type": "none"},
                             "config": {"user.lxdproxy.pid": str(inst.pid)},
                             "devices": {"web": proxy(7110)}}, wait=True)
    blocker = lab.host.socket()
    blocker.bind((HOST, 7111))
    blocker.listen()
    before = client.api.instances["c1"].get()
    c1 = client.instances.get("c1")
    c1.devices["web"] = proxy(7111)  # change web onto a busy port
    with pytest.raises(LXDAPIException) as err:
        c1.save(wait=True)
    assert str(err.value).startswith('Failed to start device "web": ')
    after = client.api.instances["c1"].get()
    assert after.json() == before.json() and after.headers["ETag"] == before.headers["ETag"]
    assert eventually_roundtrip(lab.host, HOST, 7110) == b"ping"  # old device restored
    blocker.close()


def test_pylxd_device_without_type_gets_lxds_text(lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    client = Client(endpoint=str(daemon.socket))
    client.instances.create({"name": "c1", "source": {"type": "none"},
                             "config": {"user.lxdproxy.pid": str(inst.pid)}}, wait=True)
    c1 = client.instances.get("c1")
    c1.devices["x"] = {"path": "/"}
    with pytest.raises(LXDAPIException) as err:
        c1.save(wait=True)
    assert str(err.value) == ('Invalid devices: Device validation failed for "x": Failed '
                              'loading device "x": Missing device type in config')
    assert "x" not in client.instances.get("c1").devices
