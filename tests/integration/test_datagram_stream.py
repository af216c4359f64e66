"""tcp->udp and unix->udp: relay_stream_to_datagram with the UDP target in an instance."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from lab.datagrams import UdpRecorder, open_fds, run, wait_until
from lxdproxy.forward.udp.listener import relay_stream_to_datagram
from lxdproxy.proxy_protocol.codec import Transport, encode_v2, parse_header

pytestmark = pytest.mark.lab

BOTH_LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


def _dgram_to(inst, port: int) -> socket.socket:
    sock = inst.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _tcp_pair(lab) -> tuple[socket.socket, socket.socket]:
    """(client in a lab client netns, accepted connection in lab.host)."""
    client_ns = lab.add_client()
    listener = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((lab.host.ipv4, 0))
    listener.listen(1)
    client = client_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    accepted.setblocking(False)
    return client, accepted


def _unix_pair() -> tuple[socket.socket, socket.socket]:
    client, accepted = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    accepted.setblocking(False)
    return client, accepted


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await asyncio.to_thread(sock.recv, 65536)
        if not chunk:
            break
        data += chunk
    return data


@BOTH_LOOPS
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_reply_after_half_close(lab, loop_kind, kind):
    """LXD checklist H: the UDP reply arrives after the client's half-close."""
    inst = lab.add_instance()
    server = UdpRecorder(inst, hold=True)
    client, accepted = _tcp_pair(lab) if kind == "tcp" else _unix_pair()
    dgram = _dgram_to(inst, server.port)

    async def main():
        before = open_fds()
        relay = asyncio.create_task(relay_stream_to_datagram(accepted, dgram, idle_timeout=0.5))
        await asyncio.to_thread(client.sendall, b"ping")
        await asyncio.to_thread(client.shutdown, socket.SHUT_WR)
        await wait_until(lambda: len(server.seen) == 1, "the datagram")
        await asyncio.sleep(0.2)  # let the relay see the EOF before the reply exists
        assert not relay.done()
        server.release()
        assert await _recv_exactly(client, 4) == b"ping"
        client.close()
        await asyncio.wait_for(relay, 10)  # idle (tcp) or hang-up (unix) ends it
        assert accepted.fileno() == -1 and dgram.fileno() == -1
        assert open_fds() == before - {accepted_fd, dgram_fd, client_fd}

    accepted_fd, dgram_fd, client_fd = accepted.fileno(), dgram.fileno(), client.fileno()
    try:
        run(loop_kind, main())
        assert [d for d, _ in server.seen] == [b"ping"]
    finally:
        server.close()


def test_unix_client_full_close_ends_relay_before_idle_timeout(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    client, accepted = _unix_pair()
    dgram = _dgram_to(inst, server.port)

    async def main():
        relay = asyncio.create_task(relay_stream_to_datagram(accepted, dgram))  # 30 min idle
        await asyncio.to_thread(client.sendall, b"x")
        assert await _recv_exactly(client, 1) == b"x"
        client.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.1)
        client.close()
        await asyncio.wait_for(relay, 10)

    try:
        run("uvloop", main())
    finally:
        server.close()


def test_each_chunk_is_one_datagram_with_v2_header(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    client, accepted = _tcp_pair(lab)
    dgram = _dgram_to(inst, server.port)
    header = encode_v2(transport=Transport.DGRAM, src=accepted.getpeername(),
                       dst=accepted.getsockname())

    async def main():
        relay = asyncio.create_task(relay_stream_to_datagram(accepted, dgram, header=header))
        for i, msg in enumerate((b"a", b"bb", b"ccc")):
            await asyncio.to_thread(client.sendall, msg)
            await wait_until(lambda i=i: len(server.seen) == i + 1, f"datagram {i}")
        expected = b"".join(header + m for m in (b"a", b"bb", b"ccc"))
        assert await _recv_exactly(client, len(expected)) == expected
        relay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await relay
        assert accepted.fileno() == -1 and dgram.fileno() == -1

    try:
        run("asyncio", main())
        for (data, _), msg in zip(server.seen, (b"a", b"bb", b"ccc"), strict=True):
            parsed = parse_header(data)
            assert parsed.transport == Transport.DGRAM
            assert parsed.src == client.getsockname()
            assert data[parsed.header_length:] == msg
    finally:
        server.close()
        client.close()


@BOTH_LOOPS
def test_bulk_stream_is_cut_into_datagrams_that_fit(lab, loop_kind):
    """A 200 KB write becomes datagrams no larger than a UDP payload (no EMSGSIZE drops)."""
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    client, accepted = _unix_pair()
    dgram = _dgram_to(inst, server.port)
    data = os.urandom(200_000)

    async def main():
        relay = asyncio.create_task(relay_stream_to_datagram(accepted, dgram))
        await asyncio.to_thread(client.sendall, data)
        assert await _recv_exactly(client, len(data)) == data
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)

    try:
        run(loop_kind, main())
        assert max(len(d) for d, _ in server.seen) <= 65507
    finally:
        server.close()
        client.close()


def test_idle_connection_is_closed(lab):
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    client, accepted = _tcp_pair(lab)
    dgram = _dgram_to(inst, server.port)

    async def main():
        await asyncio.wait_for(relay_stream_to_datagram(accepted, dgram, idle_timeout=0.3), 10)
        assert await asyncio.to_thread(client.recv, 10) == b""  # the client sees the close

    try:
        run("asyncio", main())
    finally:
        server.close()
        client.close()


def test_unreachable_target_does_not_end_the_connection(lab):
    """ICMP unreachable on the UDP side is transient: a server started later still answers."""
    inst = lab.add_instance()
    probe = UdpRecorder(inst)
    port = probe.port
    probe.close()
    client, accepted = _unix_pair()
    dgram = _dgram_to(inst, port)

    async def main():
        relay = asyncio.create_task(relay_stream_to_datagram(accepted, dgram))
        await asyncio.to_thread(client.sendall, b"lost")
        await asyncio.sleep(0.2)
        assert not relay.done()
        server = UdpRecorder(inst, port=port)
        try:
            await asyncio.to_thread(client.sendall, b"found")
            assert await _recv_exactly(client, 5) == b"found"
        finally:
            server.close()
        client.close()
        await asyncio.wait_for(relay, 10)

    run("uvloop", main())


def test_bad_arguments_still_close_both_sockets():
    async def main():
        for kwargs in ({"idle_timeout": 0}, {"header": b"h" * 70000}):
            stream, peer = socket.socketpair()
            dgram, dpeer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # no netns use
            with pytest.raises(ValueError):
                await relay_stream_to_datagram(stream, dgram, **kwargs)
            assert stream.fileno() == -1 and dgram.fileno() == -1
            peer.close()
            dpeer.close()

    run("asyncio", main())
