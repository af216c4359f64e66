"""The udp pairs wired through the Forwarder (the relays themselves are datagram.py's, tested by
its owner): udp->udp, tcp->udp, unix->udp, both bind sides, restart and a connect change
(LXD checklist §7 F-H), and the per-datagram PROXY v2 header."""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.proxy_protocol.codec import Transport, parse_header

pytestmark = pytest.mark.lab


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5, udp_idle_timeout=30)
    yield f
    await f.stop_all()


def _udp_exchange(sock: socket.socket, addr: tuple, payload: bytes) -> bytes:
    with sock:
        sock.settimeout(10)
        sock.sendto(payload, addr)
        return sock.recv(65536)


async def udp_roundtrip(place, addr: tuple, payload: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = await asyncio.to_thread(place.socket, family, socket.SOCK_DGRAM)
    return await asyncio.to_thread(_udp_exchange, sock, addr, payload)


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_checklist_f_udp_to_udp(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    key = await started(fwd, "p", proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321"),
                        host=lab.host, inst=inst)
    assert await udp_roundtrip(lab.host, ("127.0.0.1", 1234), b"F1") == b"F1"
    await asyncio.to_thread(inst.restart)
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    assert await udp_roundtrip(lab.host, ("127.0.0.1", 1234), b"F2") == b"F2"
    lab.echo(inst, "udp", "127.0.0.1", 1337, tag=True)
    await fwd.start(key, proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:1337"),
                    listen_ns=lab.host.namespaces, connect_ns=inst.namespaces,
                    instance_name="c1")
    assert await udp_roundtrip(lab.host, ("127.0.0.1", 1234), b"F3") == b"1337:F3"


async def test_udp_range_and_bind_instance(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(lab.host, "udp", "::1", 4321, 4322, tag=True)
    await started(fwd, "p", proxy(listen="udp:[::]:53,54", connect="udp:[::1]:4321-4322",
                                  bind="instance"), host=lab.host, inst=inst)
    assert await udp_roundtrip(inst, ("::1", 54), b"q") == b"4322:q"
    assert await udp_roundtrip(inst, ("127.0.0.1", 53), b"q") == b"4321:q"  # dual-stack


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_checklist_h_tcp_to_udp_reply_after_half_close(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    key = await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="udp:127.0.0.1:4321"),
                        host=lab.host, inst=inst)
    # The reply comes back after the client's half-close (close-on-first-EOF would lose it).
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"H1", expect=2) == b"H1"
    await asyncio.to_thread(inst.restart)
    lab.echo(inst, "udp", "127.0.0.1", 1337, tag=True)
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    await fwd.start(key, proxy(listen="tcp:127.0.0.1:1234", connect="udp:127.0.0.1:1337"),
                     listen_ns=lab.host.namespaces, connect_ns=inst.namespaces,
                     instance_name="c1")
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"H3", expect=7) == b"1337:H3"


async def test_checklist_g_unix_to_udp(lab: Lab, fwd: Forwarder, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    host_sock = str(tmp_path / "g.sock")
    await started(fwd, "p", proxy(listen=f"unix:{host_sock}", connect="udp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(None, host_sock, b"G1", expect=2) == b"G1"


async def test_tcp_to_udp_bind_instance(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(lab.host, "udp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="udp:127.0.0.1:4321",
                                  bind="instance"), host=lab.host, inst=inst)
    assert await roundtrip(inst, ("127.0.0.1", 1234), b"up", half_close=False, expect=2) == b"up"


async def test_udp_v2_header_on_every_datagram(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321, proxy_header=True)
    await started(fwd, "p", proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321",
                                  **{"user.lxdproxy.proxy_protocol": "v2"}),
                  host=lab.host, inst=inst, instance_name="dns1")
    sock = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 5555))
    for payload in (b"one", b"two"):
        reply = await asyncio.to_thread(_udp_exchange_keep, sock, ("127.0.0.1", 1234), payload)
        raw, _, data = reply.partition(b"|")
        header = parse_header(ast.literal_eval(raw.decode()))
        assert data == payload
        assert (header.transport, header.src, header.dst) == (
            Transport.DGRAM, ("127.0.0.1", 5555), ("127.0.0.1", 1234))
        assert header.netns == "dns1"
    sock.close()


def _udp_exchange_keep(sock: socket.socket, addr: tuple, payload: bytes) -> bytes:
    sock.settimeout(10)
    sock.sendto(payload, addr)
    return sock.recv(65536)
