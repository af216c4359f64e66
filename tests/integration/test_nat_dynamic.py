"""user.lxdproxy.nat_dynamic (issue 11, part 1) through the real daemon, pylxd and real packets:
an instance whose NIC gets its address from dnsmasq in the lab, then a different one; NAT traffic
from a client reaches it at each address (the backend sees the client's own address), the rules
follow within 1 s, IPv4 and IPv6 wait and come up independently, and the ruleset after removal
is the one from before."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pylxd import Client

from lab import Lab, LabInstance
from lab.daemon import NFT_TABLE, RunningDaemon
from lab.dhcp import DhcpClient, DhcpServer, mac_of, wait_for_address

pytestmark = pytest.mark.lab

# Answers "<peer ip> <local ip> <payload>" on port 8000, IPv4 and IPv6 (stdlib only).
PEER_SERVER = r"""
import socket, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 8000))
s.listen(16)
print("READY", flush=True)
while True:
    c, peer = s.accept()
    with c:
        local = c.getsockname()[0].removeprefix("::ffff:")
        c.sendall(f"{peer[0].removeprefix('::ffff:')} {local} ".encode() + c.recv(4096))
"""
DYNAMIC_V4 = {"type": "proxy", "listen": "tcp:198.18.0.1:7000", "connect": "tcp:0.0.0.0:8000",
              "nat": "true", "user.lxdproxy.nat_dynamic": "true"}
DYNAMIC_V6 = DYNAMIC_V4 | {"listen": "tcp:[fd42::1]:7000", "connect": "tcp:[::]:8000"}


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # The udhcpc script must be visible inside the instance (its /tmp is private).
    path = Path(f"/run/lxp-dyn-{os.urandom(3).hex()}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ruleset(lab: Lab) -> str:
    return lab.host.run(["nft", "list", "ruleset"]).stdout.decode()


def dnat_targets(lab: Lab) -> str:
    out = lab.host.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).stdout.decode()
    return " ".join(line.strip() for line in out.splitlines() if "dnat" in line)


def wait_until(check: object, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
    return time.monotonic()


def ask(client: object, host: str, payload: bytes) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = client.socket(family, socket.SOCK_STREAM)  # type: ignore[attr-defined]
    with sock:
        sock.connect((host, 7000))
        sock.sendall(payload)
        return sock.recv(4096).decode()


def waiting_warnings(api: Client) -> list[dict[str, object]]:
    rows = api.api.warnings.get(params={"recursion": 1}).json()["metadata"] or []
    return [w for w in rows if w["type"] == "Proxy device waiting for an instance address"]


def serve(inst: LabInstance) -> None:
    proc = inst.popen(["/usr/bin/python3", "-c", PEER_SERVER], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready and b"READY" in proc.stdout.readline()


def test_nat_follows_the_dhcp_address(lab: Lab, tmp_path: Path, run_dir: Path) -> None:
    inst = lab.add_instance()
    # No static address: what the instance has comes from DHCP (IPv4) or is added (IPv6).
    inst.run(["ip", "-4", "addr", "flush", "dev", "eth0"])
    inst.run(["ip", "-6", "addr", "del", f"{inst.ipv6}/64", "dev", "eth0"])
    serve(inst)
    client = lab.add_client()
    before = ruleset(lab)
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    mac = mac_of(inst)
    dhcp = DhcpServer(lab, tmp_path, mac, "198.18.0.100")
    dhcp_client: DhcpClient | None = None
    try:
        api = Client(endpoint=str(daemon.socket))
        api.instances.create({"name": "c1", "source": {"type": "none"},
                              "config": {"user.lxdproxy.pid": str(inst.pid)},
                              "devices": {"eth0": {"type": "nic", "nictype": "bridged"}}},
                             wait=True)
        c1 = api.instances.get("c1")
        c1.devices["web4"] = DYNAMIC_V4
        c1.devices["web6"] = DYNAMIC_V6
        c1.save(wait=True)  # up, though neither has an address yet

        state = api.instances.get("c1").state()
        assert set(state.waiting_devices) == {"web4", "web6"}
        assert 'NIC "eth0" (interface "eth0") has no IPv4 address yet' in \
            state.waiting_devices["web4"]
        assert state.failed_devices == {}
        assert [w["status"] for w in waiting_warnings(api)] == ["new", "new"]
        assert dnat_targets(lab) == ""

        dhcp_client = DhcpClient(inst, run_dir)
        got = wait_for_address(inst, "198.18.0.100")
        installed = wait_until(lambda: "198.18.0.100" in dnat_targets(lab), 5)
        assert installed - got < 1.0
        assert ask(client, "198.18.0.1", b"one") == f"{client.ipv4} 198.18.0.100 one"
        state = api.instances.get("c1").state()
        assert set(state.waiting_devices) == {"web6"}  # IPv6 on its own

        # A different lease: dnsmasq now names .101, refuses the renewal of .100, the client
        # takes .101, and the rules follow.
        dhcp.assign(mac, "198.18.0.101")
        dhcp_client.renew()
        got = wait_for_address(inst, "198.18.0.101")
        moved = wait_until(lambda: "198.18.0.101" in dnat_targets(lab), 5)
        assert moved - got < 1.0
        assert "198.18.0.100" not in dnat_targets(lab)
        assert ask(client, "198.18.0.1", b"two") == f"{client.ipv4} 198.18.0.101 two"

        inst.run(["ip", "-6", "addr", "add", "fd42::77/64", "dev", "eth0", "nodad"])
        inst.run(["ip", "-6", "route", "replace", "default", "via", "fd42::1"])
        got = time.monotonic()
        six = wait_until(lambda: "fd42::77" in dnat_targets(lab), 5)
        assert six - got < 1.0
        assert ask(client, "fd42::1", b"six") == f"{client.ipv6} fd42::77 six"
        assert api.instances.get("c1").state().waiting_devices == {}
        assert [w["status"] for w in waiting_warnings(api)] == ["resolved", "resolved"]

        c1 = api.instances.get("c1")
        del c1.devices["web4"]
        del c1.devices["web6"]
        c1.save(wait=True)
        assert ruleset(lab) == before
    finally:
        if dhcp_client is not None:
            dhcp_client.close()
        dhcp.close()
        daemon.stop()
