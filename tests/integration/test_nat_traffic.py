"""NAT devices with real packets: a client in its own netns, the rules in lab.host's netns, the
backend in the instance reporting the address it sees (the client's own, not the host's)."""

from __future__ import annotations

import select
import socket
import subprocess

import pytest

from lab import Lab
from lab import LabInstance as LabInst
from lab.devices import apply_device, nat_device, remove_device
from lxdproxy.instances.model import Instance, Nic

pytestmark = pytest.mark.lab

# Backend for the instance: replies "<peer-ip> <local-port> <payload>" (stdlib only).
PEER_SERVER = r"""
import socket, sys, threading
proto, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def tcp(s):
    while True:
        c, peer = s.accept()
        with c:
            c.sendall(f"{peer[0]} {s.getsockname()[1]} ".encode() + c.recv(4096))
def udp(s):
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(f"{peer[0]} {s.getsockname()[1]} ".encode() + data, peer)
for p in ports:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", p))
    if proto == "tcp":
        s.listen(16)
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(s,), daemon=True).start()
print("READY", flush=True)
threading.Event().wait()
"""


def serve(inst: LabInst, proto: str, *ports: int) -> subprocess.Popen[bytes]:
    proc = inst.popen(["/usr/bin/python3", "-c", PEER_SERVER, proto, *map(str, ports)],
                      stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready and b"READY" in proc.stdout.readline()
    return proc


def model(inst: LabInst) -> Instance:
    return Instance(name=inst.name, pid=inst.pid,
                    nics=(Nic("eth0", "bridged", inst.ipv4, inst.ipv6, inst.veth_host),))


def ask(place, proto: str, ip: str, port: int, payload: bytes = b"hi",
        sock: socket.socket | None = None) -> tuple[str, int, bytes]:
    """Send ``payload`` to ip:port from ``place``; returns (peer the backend saw, its port, echo)."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    if proto == "tcp":
        with place.socket(fam, socket.SOCK_STREAM) as s:
            s.connect((ip, port))
            s.sendall(payload)
            reply = s.recv(4096)
    else:
        s = sock or place.socket(fam, socket.SOCK_DGRAM)
        s.sendto(payload, (ip, port))
        reply, _ = s.recvfrom(4096)
        if sock is None:
            s.close()
    peer, local_port, echoed = reply.split(b" ", 2)
    return peer.decode().removeprefix("::ffff:"), int(local_port), echoed


@pytest.mark.parametrize("proto", ["tcp", "udp"])
async def test_client_reaches_instance_and_is_seen_with_its_own_address(
    lab: Lab, proto: str
) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    serve(inst, proto, 8000)
    await apply_device(model(inst), "v4", nat_device(f"{proto}:198.18.0.1:7000",
                                                     f"{proto}:{inst.ipv4}:8000"),
                       net_path=lab.host.path)
    await apply_device(model(inst), "v6", nat_device(f"{proto}:[fd42::1]:7000",
                                                     f"{proto}:[{inst.ipv6}]:8000"),
                       net_path=lab.host.path)
    assert ask(client, proto, "198.18.0.1", 7000) == (client.ipv4, 8000, b"hi")
    assert ask(client, proto, "fd42::1", 7000) == (client.ipv6, 8000, b"hi")
    # the host itself goes through the output chain
    assert ask(lab.host, proto, "198.18.0.1", 7000)[1:] == (8000, b"hi")


async def test_ranges_many_to_one_and_wildcard_connect(lab: Lab) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    serve(inst, "tcp", 8100, 8101, 8102, 7200, 7201)
    serve(inst, "udp", 8300)
    m = model(inst)
    # 1:1 with different ports (one rule per port), identical range (one rule), N:1 over UDP;
    # connect 0.0.0.0 / :: becomes the NIC's static address.
    await apply_device(m, "shift", nat_device("tcp:198.18.0.1:7100-7102", "tcp:0.0.0.0:8100-8102"),
                       net_path=lab.host.path)
    await apply_device(m, "same", nat_device("tcp:[fd42::1]:7200-7201", "tcp:[::]:7200-7201"),
                       net_path=lab.host.path)
    await apply_device(m, "many1", nat_device("udp:198.18.0.1:7300-7302", "udp:0.0.0.0:8300"),
                       net_path=lab.host.path)
    for i in range(3):
        assert ask(client, "tcp", "198.18.0.1", 7100 + i) == (client.ipv4, 8100 + i, b"hi")
        assert ask(client, "udp", "198.18.0.1", 7300 + i) == (client.ipv4, 8300, b"hi")
    for port in (7200, 7201):
        assert ask(client, "tcp", "fd42::1", port) == (client.ipv6, port, b"hi")


@pytest.mark.parametrize(("listen", "family_addr"), [("198.18.0.1", "ipv4"), ("fd42::1", "ipv6")])
async def test_hairpin_instance_reaches_itself_through_listen_ip(
    lab: Lab, listen: str, family_addr: str
) -> None:
    inst = lab.add_instance()
    serve(inst, "tcp", 8000)
    lst = f"[{listen}]" if ":" in listen else listen
    await apply_device(model(inst), "hp", nat_device(f"tcp:{lst}:7000", "tcp:0.0.0.0:8000"
                                                     if family_addr == "ipv4" else "tcp:[::]:8000"),
                       net_path=lab.host.path)
    # br_netfilter is on in the lab (the default), so, as LXD does, hairpin got enabled.
    link = lab.host.run(["ip", "-d", "link", "show", inst.veth_host], text=True).stdout
    assert "hairpin on" in link
    peer, port, echoed = ask(inst, "tcp", listen, 7000)
    # masqueraded: the instance sees the bridge address, and the reply finds its way back
    assert (peer, port, echoed) == (listen, 8000, b"hi")


async def test_udp_conntrack_is_flushed_on_apply_and_remove(lab: Lab) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    serve(inst, "udp", 8000)
    # A UDP service on the host owns the port first (say, the device ran with nat=false).
    lab.echo(lab.host, "udp", "198.18.0.1", 7000)
    # Another NAT device keeps the nat hooks registered: otherwise the kernel stops mangling
    # every NATed flow once the last nat chain goes, which would hide stale entries.
    await apply_device(model(inst), "keep", nat_device("udp:198.18.0.1:7999", "udp:0.0.0.0:8000"),
                       net_path=lab.host.path)
    sock = client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((client.ipv4, 40000))  # one 5-tuple, one conntrack entry throughout
    dest = ("198.18.0.1", 7000)

    def exchange(payload: bytes) -> bytes:
        sock.sendto(payload, dest)
        return sock.recvfrom(4096)[0]

    assert exchange(b"early") == b"early"  # the host's service answered (and was seen replying)
    await apply_device(model(inst), "u", nat_device("udp:198.18.0.1:7000", "udp:0.0.0.0:8000"),
                       net_path=lab.host.path)
    # Without the flush the established entry would keep going to the host's service.
    assert exchange(b"now") == f"::ffff:{client.ipv4} 8000 now".encode()
    await remove_device(inst.name, "u", net_path=lab.host.path)
    # ... and without it the DNATed entry would keep reaching the instance after removal.
    assert exchange(b"after") == b"after"
    sock.close()


async def test_wildcard_listen_extension(lab: Lab) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    serve(inst, "tcp", 8000)
    await apply_device(model(inst), "w",
                       nat_device("tcp:0.0.0.0:7000", "tcp:0.0.0.0:8000", nat_wildcard=True),
                       net_path=lab.host.path)
    await apply_device(model(inst), "w6",
                       nat_device("tcp:[::]:7000", "tcp:[::]:8000", nat_wildcard=True),
                       net_path=lab.host.path)
    # any address of the host: the bridge's and the client-side gateway's
    assert ask(client, "tcp", "198.18.0.1", 7000) == (client.ipv4, 8000, b"hi")
    assert ask(client, "tcp", client.gateway_v4, 7000) == (client.ipv4, 8000, b"hi")
    assert ask(client, "tcp", client.gateway_v6, 7000) == (client.ipv6, 8000, b"hi")
    # ... but not traffic the host forwards to others (fib daddr type local)
    serve(inst, "tcp", 7000)
    assert ask(client, "tcp", inst.ipv4, 7000)[1] == 7000


async def test_removed_device_stops_forwarding_and_spares_others(lab: Lab) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    serve(inst, "tcp", 8000, 8001)
    m = model(inst)
    await apply_device(m, "a", nat_device("tcp:198.18.0.1:7000", "tcp:0.0.0.0:8000"),
                       net_path=lab.host.path)
    await apply_device(m, "b", nat_device("tcp:198.18.0.1:7001", "tcp:0.0.0.0:8001"),
                       net_path=lab.host.path)
    assert await remove_device(inst.name, "a", net_path=lab.host.path)
    with pytest.raises(ConnectionRefusedError):
        ask(client, "tcp", "198.18.0.1", 7000)
    assert ask(client, "tcp", "198.18.0.1", 7001) == (client.ipv4, 8001, b"hi")
