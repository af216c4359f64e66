"""udp->udp: UdpListenerRelay between lab.host (listen) and an instance (target)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest

from lab.datagrams import (
    UdpRecorder,
    exchange,
    open_fds,
    run,
    target_opener,
    udp_client,
    udp_listener,
    wait_until,
)
from lxdproxy.forward.udp.listener import UdpListenerRelay
from lxdproxy.proxy_protocol.codec import Transport, encode_v2, parse_header

pytestmark = pytest.mark.lab

BOTH_LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


@BOTH_LOOPS
def test_echo_and_no_fd_leak_after_stop(lab, loop_kind):
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    listen = udp_listener(lab.host, lab.host.ipv4)
    clients = [udp_client(lab.host) for _ in range(3)]
    opener = target_opener(inst)  # opens the netns executor's fd before we count

    async def main():
        before = open_fds()
        relay = UdpListenerRelay(listen, 4321, opener)
        relay.start()
        for i, client in enumerate(clients):
            for j in range(3):
                msg = f"hello {i}.{j}".encode()
                assert await exchange(client, msg, listen.getsockname()) == msg
        assert relay.session_count == 3
        assert len(open_fds() - before) == 3  # one target socket per client
        await relay.stop()
        assert open_fds() == before
        assert listen.fileno() != -1  # the caller owns the listen socket

    run(loop_kind, main())


@BOTH_LOOPS
def test_one_session_per_client_and_per_listen_port(lab, loop_kind):
    """LXD keys sessions by client ip:port only, so one client on two listen ports shares a
    session (spec §4.4). We key by (listen socket, client)."""
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen1 = udp_listener(lab.host, lab.host.ipv4)
    listen2 = udp_listener(lab.host, lab.host.ipv4)
    a, b = udp_client(lab.host), udp_client(lab.host)

    async def main():
        relays = [UdpListenerRelay(sock, server.port, target_opener(inst))
                  for sock in (listen1, listen2)]
        for relay in relays:
            relay.start()
        assert await exchange(a, b"a->1", listen1.getsockname()) == b"a->1"
        assert await exchange(a, b"a->2", listen2.getsockname()) == b"a->2"
        assert await exchange(b, b"b->1", listen1.getsockname()) == b"b->1"
        assert await exchange(a, b"a->1 again", listen1.getsockname()) == b"a->1 again"
        for relay in relays:
            await relay.stop()

    try:
        run(loop_kind, main())
        sources = dict(zip([d for d, _ in server.seen], server.peers, strict=True))
        assert len({sources[b"a->1"], sources[b"a->2"], sources[b"b->1"]}) == 3
        assert sources[b"a->1 again"] == sources[b"a->1"]  # the session is reused
    finally:
        server.close()


def test_60000_byte_datagram_intact(lab):
    """LXD truncates datagrams at 32 KiB (spec §4.4)."""
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    big = os.urandom(60000)

    async def main():
        relay = UdpListenerRelay(listen, 4321, target_opener(inst))
        relay.start()
        assert await exchange(client, big, listen.getsockname()) == big
        await relay.stop()

    run("asyncio", main())


def test_ipv6_client_from_other_netns_to_instance_address(lab):
    inst = lab.add_instance()
    client_ns = lab.add_client()
    lab.echo(inst, "udp", inst.ipv6, 4321)
    listen = udp_listener(lab.host, "::", socket.AF_INET6)
    client = udp_client(client_ns, socket.AF_INET6)

    async def main():
        relay = UdpListenerRelay(listen, 4321, target_opener(inst, inst.ipv6, socket.AF_INET6))
        relay.start()
        port = listen.getsockname()[1]
        assert await exchange(client, b"over v6", (lab.host.ipv6, port)) == b"over v6"
        await relay.stop()

    run("uvloop", main())


@BOTH_LOOPS
def test_unreachable_target_drops_session_then_recovers(lab, loop_kind):
    """LXD bug §9.10: after an ICMP unreachable the client got nothing for 30 minutes."""
    inst = lab.add_instance()
    probe = UdpRecorder(inst)  # reserve a free port, then free it: nobody listens there
    port = probe.port
    probe.close()
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)

    async def main():
        relay = UdpListenerRelay(listen, port, target_opener(inst))
        relay.start()
        await asyncio.to_thread(client.sendto, b"anyone?", listen.getsockname())
        # The session may be opened, refused (ICMP) and dropped between two polls: give the
        # refusal time to arrive instead of trying to see the session exist.
        await asyncio.sleep(0.3)
        await wait_until(lambda: relay.session_count == 0, "the refused session to go")
        server = UdpRecorder(inst, port=port)
        try:
            assert await exchange(client, b"now?", listen.getsockname()) == b"now?"
        finally:
            server.close()
        await relay.stop()

    run(loop_kind, main())


def test_icmp_refused_flood_writes_little_log(lab, caplog):
    """Issue 12's 'already holds' row: a flood towards a target nobody listens on (every
    datagram answered by ICMP port unreachable) writes a few lines of log, not one per datagram,
    and no traceback."""
    inst = lab.add_instance()
    probe = UdpRecorder(inst)
    port = probe.port
    probe.close()
    listen = udp_listener(lab.host, lab.host.ipv4)
    clients = [udp_client(lab.host) for _ in range(20)]

    async def main():
        relay = UdpListenerRelay(listen, port, target_opener(inst))
        relay.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        sent = 0
        while loop.time() < deadline:
            for c in clients:
                for _ in range(50):
                    with contextlib.suppress(OSError):
                        c.sendto(b"x" * 32, listen.getsockname())
                        sent += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        await relay.stop()
        return sent

    with caplog.at_level("DEBUG"):
        sent = run("uvloop", main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert sent > 10_000, sent
    assert len(text) < 4096, (len(text), text[:500])
    assert "Traceback" not in caplog.text


def test_idle_session_expires_and_is_rebuilt(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    opener = target_opener(inst)

    async def main():
        before = open_fds()
        relay = UdpListenerRelay(listen, server.port, opener, idle_timeout=0.3)
        relay.start()
        assert await exchange(client, b"one", listen.getsockname()) == b"one"
        await wait_until(lambda: relay.session_count == 0, "the idle session to expire")
        assert open_fds() == before  # its target socket is closed
        assert await exchange(client, b"two", listen.getsockname()) == b"two"
        await relay.stop()

    try:
        run("uvloop", main())
        assert server.peers[0] != server.peers[1]  # a new target socket after expiry
    finally:
        server.close()


def test_max_sessions_evicts_least_recently_used(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    a, b, c = (udp_client(lab.host) for _ in range(3))
    opener = target_opener(inst)

    async def main():
        before = open_fds()
        relay = UdpListenerRelay(listen, server.port, opener, max_sessions=2)
        relay.start()
        addr = listen.getsockname()
        assert await exchange(a, b"a1", addr) == b"a1"
        assert await exchange(b, b"b1", addr) == b"b1"
        assert await exchange(a, b"a2", addr) == b"a2"  # b is now the least recently used
        assert await exchange(c, b"c1", addr) == b"c1"  # evicts b
        assert relay.session_count == 2
        assert len(open_fds() - before) == 2
        assert await exchange(a, b"a3", addr) == b"a3"  # a survived
        assert await exchange(b, b"b2", addr) == b"b2"  # b comes back with a new session
        await relay.stop()
        assert open_fds() == before

    try:
        run("asyncio", main())
        src = dict(zip([d for d, _ in server.seen], server.peers, strict=True))
        assert src[b"a1"] == src[b"a2"] == src[b"a3"]
        assert src[b"b1"] != src[b"b2"]
    finally:
        server.close()


@BOTH_LOOPS
def test_datagrams_queue_while_target_opens(lab, loop_kind):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    opener = target_opener(inst)
    gate = asyncio.Event()

    async def slow_open(port: int) -> socket.socket:
        await gate.wait()
        return await opener(port)

    async def main():
        relay = UdpListenerRelay(listen, server.port, slow_open)
        relay.start()
        for i in range(5):
            await asyncio.to_thread(client.sendto, b"q%d" % i, listen.getsockname())
        await asyncio.sleep(0.1)  # let them all reach the relay before the target opens
        assert relay.session_count == 1
        gate.set()
        replies = [(await asyncio.to_thread(client.recvfrom, 100))[0] for _ in range(5)]
        assert replies == [b"q%d" % i for i in range(5)]
        await relay.stop()

    try:
        run(loop_kind, main())
    finally:
        server.close()


def test_stop_while_target_opens_leaks_nothing(lab):
    inst = lab.add_instance()
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)
    opener = target_opener(inst)

    async def main():
        before = open_fds()
        started = asyncio.Event()

        async def slow_open(port: int) -> socket.socket:
            started.set()
            await asyncio.sleep(0.2)
            return await opener(port)

        relay = UdpListenerRelay(listen, 9, slow_open)
        relay.start()
        await asyncio.to_thread(client.sendto, b"x", listen.getsockname())
        await asyncio.wait_for(started.wait(), 10)
        await relay.stop()
        assert open_fds() == before

    run("asyncio", main())


def test_proxy_v2_dgram_header_on_every_datagram(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    listen = udp_listener(lab.host, lab.host.ipv4)
    client = udp_client(lab.host)

    def header(client_addr: tuple, local_addr: tuple) -> bytes:
        return encode_v2(transport=Transport.DGRAM, src=client_addr, dst=local_addr)

    async def main():
        relay = UdpListenerRelay(listen, server.port, target_opener(inst), header_factory=header)
        relay.start()
        for msg in (b"first", b"second"):
            reply = await exchange(client, msg, listen.getsockname())
            assert reply.endswith(msg)  # the server echoes header + payload
        await relay.stop()

    try:
        run("uvloop", main())
        client_addr = client.getsockname()
        assert len(server.seen) == 2
        for (data, _peer), msg in zip(server.seen, (b"first", b"second"), strict=True):
            parsed = parse_header(data)
            assert parsed.version == 2
            assert parsed.transport == Transport.DGRAM
            assert parsed.src == (lab.host.ipv4, client_addr[1])
            assert parsed.dst == listen.getsockname()
            assert data[parsed.header_length:] == msg
    finally:
        server.close()


def test_bad_arguments_are_clear_errors(lab):
    listen = udp_listener(lab.host, lab.host.ipv4)
    with pytest.raises(ValueError, match="idle_timeout"):
        UdpListenerRelay(listen, 1, target_opener(lab.host), idle_timeout=0)
    with pytest.raises(ValueError, match="max_sessions"):
        UdpListenerRelay(listen, 1, target_opener(lab.host), max_sessions=0)
