"""PROXY protocol through the forwarder: v1 bytes as LXD writes them, v2 read by a real HAProxy."""

from __future__ import annotations

import ast
import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import started
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.proxy_protocol.codec import Transport, parse_header

pytestmark = pytest.mark.lab

V2 = {"user.lxdproxy.proxy_protocol": "v2"}


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5)
    yield f
    await f.stop_all()


def _talk(sock: socket.socket, addr, payload: bytes) -> tuple[tuple, bytes]:
    """Connect, send, half-close; return (our own address, everything received)."""
    with sock:
        sock.settimeout(10)
        sock.connect(addr)
        me = sock.getsockname() if sock.family != socket.AF_UNIX else ()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return me, data


@pytest.mark.parametrize("listen", ["tcp:198.18.0.1:1234", "tcp:0.0.0.0:1234"])
async def test_v1_header_bytes_match_lxd(lab: Lab, fwd: Forwarder, listen: str) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, proxy_header=True)
    await started(fwd, "p", proxy(listen=listen, connect="tcp:127.0.0.1:4321",
                                  proxy_protocol="true"), host=lab.host, inst=inst)
    me, data = await asyncio.to_thread(_talk, client.socket(), (lab.host.ipv4, 1234), b"data")
    # forkproxy: "PROXY TCP4 <client> <the address the client dialled> <cport> <lport>\r\n";
    # a v4 client of the dual-stack wildcard listener is still TCP4 with dotted addresses.
    header = f"PROXY TCP4 {client.ipv4} {lab.host.ipv4} {me[1]} 1234\r\n".encode()
    assert data == repr(header).encode() + b"\ndata"


async def test_v1_header_ipv6(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, proxy_header=True)
    await started(fwd, "p", proxy(listen="tcp:[::]:1234", connect="tcp:127.0.0.1:4321",
                                  proxy_protocol="true"), host=lab.host, inst=inst)
    sock = client.socket(socket.AF_INET6)
    me, data = await asyncio.to_thread(_talk, sock, (lab.host.ipv6, 1234), b"six")
    header = f"PROXY TCP6 {client.ipv6} {lab.host.ipv6} {me[1]} 1234\r\n".encode()
    assert data == repr(header).encode() + b"\nsix"


async def test_v1_from_a_unix_listener_is_unknown(lab: Lab, fwd: Forwarder,
                                                  tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, proxy_header=True)
    host_sock = str(tmp_path / "pp.sock")
    await started(fwd, "p", proxy(listen=f"unix:{host_sock}", connect="tcp:127.0.0.1:4321",
                                  proxy_protocol="true"), host=lab.host, inst=inst)
    _me, data = await asyncio.to_thread(_talk, socket.socket(socket.AF_UNIX), host_sock, b"u")
    assert data == repr(b"PROXY UNKNOWN\r\n").encode() + b"\nu"


async def test_v2_header_carries_addresses_and_the_instance_name(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, proxy_header=True)
    await started(fwd, "p", proxy(listen="tcp:0.0.0.0:1234", connect="tcp:127.0.0.1:4321", **V2),
                  host=lab.host, inst=inst, instance_name="web1")
    me, data = await asyncio.to_thread(_talk, client.socket(), (lab.host.ipv4, 1234), b"v2")
    raw, rest = data.split(b"\n", 1)
    result = parse_header(ast.literal_eval(raw.decode()))  # the echo answered with repr(header)
    assert rest == b"v2"
    assert (result.version, result.transport) == (2, Transport.STREAM)
    assert result.src == (client.ipv4, me[1])
    assert result.dst == (lab.host.ipv4, 1234)
    assert result.netns == "web1"


_HAPROXY_CFG = """
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:8080 accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port]"
"""


async def test_v2_is_accepted_by_haproxy(lab: Lab, fwd: Forwarder) -> None:
    """A real third-party consumer: HAProxy (Debian) with accept-proxy in the instance reports the
    original client address and port."""
    inst = lab.add_instance()
    client = lab.add_client()
    await asyncio.to_thread(inst.run, ["sh", "-c", "cat > /tmp/haproxy.cfg"],
                            input=_HAPROXY_CFG.encode())
    inst.popen(["haproxy", "-db", "-f", "/tmp/haproxy.cfg"])
    deadline = time.monotonic() + 10
    while True:
        probe = inst.socket()
        try:
            probe.connect(("127.0.0.1", 8080))
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "haproxy did not start"
            await asyncio.sleep(0.1)
        finally:
            probe.close()
    await started(fwd, "p", proxy(listen="tcp:0.0.0.0:1234", connect="tcp:127.0.0.1:8080", **V2),
                  host=lab.host, inst=inst)
    for family, host_ip, client_ip in [(socket.AF_INET, lab.host.ipv4, client.ipv4),
                                       (socket.AF_INET6, lab.host.ipv6, client.ipv6)]:
        request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
        me, data = await asyncio.to_thread(_talk, client.socket(family), (host_ip, 1234), request)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), data
        assert body == f"{client_ip} {me[1]}".encode()
