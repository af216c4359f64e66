"""udp->udp in batches: recvmmsg on the listen socket, GSO runs to the target, GRO buffers from
the client split into their datagrams. Bursts are sent from the loop's own thread while the
relay cannot run, so they wait in the listen socket and the relay reads them many at a time."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from lab.datagrams import (
    UdpRecorder,
    exchange,
    run,
    target_opener,
    udp_client,
    udp_listener,
    wait_until,
)
from lxdproxy.forward.udp.gso import SOL_UDP, UDP_SEGMENT, max_segment
from lxdproxy.forward.udp.listener import UdpListenerRelay
from lxdproxy.proxy_protocol.codec import Transport, encode_v2, parse_header

pytestmark = pytest.mark.lab

# Runs of one size (GSO runs), sizes that end a run, one of each extreme, then a run again.
BURST_SIZES = [64] * 100 + [1000] * 40 + [999, 1] + [1400] * 3 + [30000, 64, 64] + [200] * 50


def _payloads(sizes: list[int]) -> list[bytes]:
    # Each carries its index, so a reordered or duplicated one shows.
    return [struct.pack("!I", i).ljust(n, bytes([i % 251])) if n >= 4 else bytes([i % 251]) * n
            for i, n in enumerate(sizes)]


def _recorder(inst) -> UdpRecorder:
    server = UdpRecorder(inst)
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return server


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_burst_arrives_whole_and_in_order(lab, loop_kind):
    inst = lab.add_instance()
    server = _recorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    payloads = _payloads(BURST_SIZES)

    async def main():
        relay = UdpListenerRelay(listen, server.port, target_opener(inst))
        relay.start()
        assert await exchange(client, b"open", listen.getsockname()) == b"open"
        for p in payloads:  # the loop does not run meanwhile: they queue in the listen socket
            client.sendto(p, listen.getsockname())
        await wait_until(lambda: len(server.seen) == 1 + len(payloads), "the whole burst")
        await relay.stop()

    try:
        run(loop_kind, main())
        assert [d for d, _peer in server.seen[1:]] == payloads
        assert len({peer for _d, peer in server.seen}) == 1  # one session throughout
    finally:
        server.close()


def test_burst_with_proxy_header_on_every_datagram(lab):
    inst = lab.add_instance()
    server = _recorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    payloads = _payloads(BURST_SIZES)

    def header(client_addr: tuple, local_addr: tuple) -> bytes:
        return encode_v2(transport=Transport.DGRAM, src=client_addr, dst=local_addr)

    async def main():
        relay = UdpListenerRelay(listen, server.port, target_opener(inst), header_factory=header)
        relay.start()
        assert (await exchange(client, b"open", listen.getsockname())).endswith(b"open")
        for p in payloads:
            client.sendto(p, listen.getsockname())
        await wait_until(lambda: len(server.seen) == 1 + len(payloads), "the whole burst")
        await relay.stop()

    try:
        run("uvloop", main())
        src = (lab.host.ipv4, client.getsockname()[1])
        for (data, _peer), p in zip(server.seen[1:], payloads, strict=True):
            parsed = parse_header(data)
            assert (parsed.transport, parsed.src, parsed.dst) == (
                Transport.DGRAM, src, listen.getsockname())
            assert data[parsed.header_length:] == p
    finally:
        server.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_gso_buffer_from_client_leaves_as_its_datagrams(lab, family):
    """A client's GSO send reaches a UDP_GRO socket as one buffer: the relay cuts it at the
    segment size the kernel reports, not forwarding one 1,037-byte datagram."""
    inst = lab.add_instance()
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    server = UdpRecorder(inst, host, family=family)
    listen_ip = lab.host.ipv4 if family == socket.AF_INET else lab.host.ipv6
    listen = udp_listener(lab.host, listen_ip, family)
    client = udp_client(lab.host, family)
    segments = [bytes([65 + i]) * 100 for i in range(10)] + [b"z" * 37]

    async def main():
        relay = UdpListenerRelay(listen, server.port, target_opener(inst, host, family))
        relay.start()
        assert await exchange(client, b"open", listen.getsockname()) == b"open"
        await asyncio.to_thread(client.sendmsg, [b"".join(segments)],
                                [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))], 0,
                                listen.getsockname())
        await wait_until(lambda: len(server.seen) == 1 + len(segments), "every segment")
        await asyncio.sleep(0.1)
        await relay.stop()

    try:
        run("asyncio", main())
        assert [d for d, _peer in server.seen[1:]] == segments
    finally:
        server.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_largest_datagram_intact_both_ways(lab, family):
    """65,507 bytes is the largest UDP payload over IPv4, 65,527 over IPv6."""
    inst = lab.add_instance()
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    lab.echo(inst, "udp", host, 4321)
    listen_ip = lab.host.ipv4 if family == socket.AF_INET else lab.host.ipv6
    listen = udp_listener(lab.host, listen_ip, family)
    client = udp_client(lab.host, family)
    biggest = os.urandom(65507 if family == socket.AF_INET else 65527)

    async def main():
        relay = UdpListenerRelay(listen, 4321, target_opener(inst, host, family))
        relay.start()
        assert await exchange(client, biggest, listen.getsockname()) == biggest
        assert await exchange(client, biggest[:1000], listen.getsockname()) == biggest[:1000]
        await relay.stop()

    run("uvloop", main())


def test_target_path_takes_gso(lab):
    """The lab's target sockets report a path MTU, so same-size runs go out as GSO sends."""
    inst = lab.add_instance()
    sock = inst.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", 9))
    assert max_segment(sock) == 65535 - 28  # loopback's MTU less the IP and UDP headers
    sock.close()


# Replies: same-size runs (GSO sends to the client), sizes past the client path's MTU (1,500 on
# the lab's bridge: the kernel refuses those as GSO segments), runs again after them.
REPLY_SIZES = [64] * 60 + [1000] * 20 + [2000] * 6 + [1400] * 5 + [7, 7] + [64] * 10


async def _burst_back(server: socket.socket, peer: tuple, payloads: list[bytes]) -> None:
    """Send the replies from the loop's thread in chunks the relay's target socket holds, so
    the relay reads each chunk as one batch."""
    for at in range(0, len(payloads), 25):
        for p in payloads[at:at + 25]:
            server.sendto(p, peer)
        await asyncio.sleep(0.02)


def _receive(client: socket.socket, count: int) -> list[bytes]:
    return [client.recv(65536) for _ in range(count)]


async def _replies_through(listen, server, client, inst, payloads):
    """The client says "go" through the relay; the server bursts ``payloads`` back to it."""
    relay = UdpListenerRelay(listen, server.getsockname()[1], target_opener(inst))
    relay.start()
    await asyncio.to_thread(client.send, b"go")
    _data, peer = await asyncio.to_thread(server.recvfrom, 100)
    receiving = asyncio.ensure_future(asyncio.to_thread(_receive, client, len(payloads)))
    await _burst_back(server, peer, payloads)
    got = await receiving
    await relay.stop()
    return got


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_reply_burst_reaches_the_client_whole_and_in_order(lab, loop_kind):
    inst = lab.add_instance()
    server = inst.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.add_client())
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    client.connect((lab.host.ipv4, listen.getsockname()[1]))
    payloads = _payloads(REPLY_SIZES)

    try:
        assert run(loop_kind, _replies_through(listen, server, client, inst, payloads)) == payloads
    finally:
        server.close()


SECOND_V4 = "198.18.0.254"


def test_wildcard_reply_burst_comes_from_the_address_the_client_used(lab):
    """A GSO reply carries the pktinfo control message too: a connected client (it drops
    datagrams from any other source) still gets every reply."""
    lab.host.run(["ip", "addr", "add", f"{SECOND_V4}/24", "dev", "br0"])
    inst = lab.add_instance()
    server = inst.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    listen = udp_listener(lab.host, "0.0.0.0")
    client = udp_client(inst)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    client.connect((SECOND_V4, listen.getsockname()[1]))
    payloads = _payloads(REPLY_SIZES)

    try:
        assert run("uvloop", _replies_through(listen, server, client, inst, payloads)) == payloads
    finally:
        server.close()
