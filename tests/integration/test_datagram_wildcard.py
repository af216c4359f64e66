"""Wildcard UDP listeners answer from the address the client sent to (IP_PKTINFO).

lab.host gets a second address on br0; the kernel's own choice of source for a reply to the
instance is the primary 198.18.0.1, so a client with a connected socket (which only accepts
datagrams from the address it connected to, as most DNS resolvers do) would drop a plain
``sendto`` reply. LXD's forkproxy has that problem on multi-address hosts.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from lab.datagrams import UdpRecorder, run, target_opener
from lxdproxy.forward.udp.listener import UdpListenerRelay
from lxdproxy.proxy_protocol.codec import Transport, encode_v2, parse_header

pytestmark = pytest.mark.lab

SECOND_V4, SECOND_V6 = "198.18.0.254", "fd42::254"


def _second_addresses(lab) -> None:
    lab.host.run(["ip", "addr", "add", f"{SECOND_V4}/24", "dev", "br0"])
    lab.host.run(["ip", "addr", "add", f"{SECOND_V6}/64", "dev", "br0", "nodad"])


def _wildcard_listener(lab, family: int) -> socket.socket:
    sock = lab.host.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack, as Go does
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    sock.setblocking(False)
    return sock


def _connected_client(place, family: int, addr: tuple) -> socket.socket:
    sock = place.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect(addr)
    return sock


def _header(client_addr: tuple, local_addr: tuple) -> bytes:
    return encode_v2(transport=Transport.DGRAM, src=client_addr, dst=local_addr)


@pytest.mark.parametrize(("listen_family", "client_family", "dest"), [
    (socket.AF_INET, socket.AF_INET, SECOND_V4),
    (socket.AF_INET6, socket.AF_INET6, SECOND_V6),
    (socket.AF_INET6, socket.AF_INET, SECOND_V4),  # v4 client on a dual-stack listener
])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_reply_comes_from_the_address_the_client_used(lab, loop_kind, listen_family,
                                                      client_family, dest):
    _second_addresses(lab)
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen = _wildcard_listener(lab, listen_family)
    port = listen.getsockname()[1]
    client = _connected_client(inst, client_family, (dest, port))

    async def main():
        relay = UdpListenerRelay(listen, server.port, target_opener(inst), header_factory=_header)
        relay.start()
        for msg in (b"one", b"two"):
            await asyncio.to_thread(client.send, msg)
            reply = await asyncio.to_thread(client.recv, 65536)  # times out if mis-sourced
            assert reply.endswith(msg)
        await relay.stop()

    try:
        run(loop_kind, main())
        for data, _peer in server.seen:
            parsed = parse_header(data)
            assert parsed.dst == (dest, port)  # not the wildcard
            assert parsed.src == client.getsockname()[:2]
    finally:
        server.close()
        client.close()
