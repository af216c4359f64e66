"""The datagram relays end to end through the Forwarder, under uvloop (the daemon's loop).

Complements test_forward_datagram_pairs.py (the runtime's F/G/H tests on asyncio): checklist G
with restart and a connect change, and the LXD bugs we fix, seen from a client through a real
device: one client on two listen ports gets two sessions (spec §4.4), a 60000-byte datagram
(LXD truncates at 32 KiB), and an ICMP-unreachable target that comes back (§9.10: LXD's client
gets nothing for 30 minutes).
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from lab.datagrams import UdpRecorder, open_fds, run
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lxdproxy.forward.forwarder import Forwarder

pytestmark = pytest.mark.lab


def _client(place) -> socket.socket:
    sock = place.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


async def _exchange(sock: socket.socket, addr: tuple, payload: bytes) -> tuple[bytes, tuple]:
    await asyncio.to_thread(sock.sendto, payload, addr)
    return await asyncio.to_thread(sock.recvfrom, 65536)


def test_checklist_g_unix_to_udp_restart_and_connect_change(lab, tmp_path: Path):
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    host_sock = str(tmp_path / "g.sock")
    device = proxy(listen=f"unix:{host_sock}", connect="udp:127.0.0.1:4321")

    async def main():
        fwd = Forwarder(connect_timeout=5)
        try:
            key = await started(fwd, "g", device, host=lab.host, inst=inst)
            assert await roundtrip(None, host_sock, b"G1", expect=2) == b"G1"
            await asyncio.to_thread(inst.restart)
            lab.echo(inst, "udp", "127.0.0.1", 4321)
            await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
            assert await roundtrip(None, host_sock, b"G2", expect=2) == b"G2"
            lab.echo(inst, "udp", "127.0.0.1", 1337, tag=True)
            await fwd.start(key, proxy(listen=f"unix:{host_sock}", connect="udp:127.0.0.1:1337"),
                             listen_ns=lab.host.namespaces, connect_ns=inst.namespaces,
                             instance_name="c1")
            assert await roundtrip(None, host_sock, b"G3", expect=7) == b"1337:G3"
        finally:
            await fwd.stop_all()

    run("uvloop", main())


def test_one_client_on_two_listen_ports_gets_two_sessions(lab):
    """LXD's process-global table keyed by client ip:port sends the second port's datagrams
    through the first port's session (spec §4.4)."""
    inst = lab.add_instance()
    server = UdpRecorder(inst)
    client = _client(lab.host)
    device = proxy(listen="udp:127.0.0.1:1234,1235", connect=f"udp:127.0.0.1:{server.port}")

    async def main():
        fwd = Forwarder()
        try:
            await started(fwd, "dns", device, host=lab.host, inst=inst)
            assert await _exchange(client, ("127.0.0.1", 1234), b"to 1234") == (
                b"to 1234", ("127.0.0.1", 1234))
            assert await _exchange(client, ("127.0.0.1", 1235), b"to 1235") == (
                b"to 1235", ("127.0.0.1", 1235))  # the reply comes from the port we asked
            assert await _exchange(client, ("127.0.0.1", 1234), b"again") == (
                b"again", ("127.0.0.1", 1234))
        finally:
            await fwd.stop_all()

    try:
        run("uvloop", main())
        first, second, third = server.peers
        assert first != second and first == third
    finally:
        server.close()
        client.close()


def test_big_datagram_and_unreachable_target_recovery(lab):
    inst = lab.add_instance()
    client = _client(lab.host)
    device = proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321")
    big = os.urandom(60000)

    async def main():
        fwd = Forwarder()
        try:
            await started(fwd, "u", device, host=lab.host, inst=inst)
            # Nobody listens yet: the target answers with ICMP port unreachable.
            await asyncio.to_thread(client.sendto, b"anyone?", ("127.0.0.1", 1234))
            await asyncio.sleep(0.3)
            lab.echo(inst, "udp", "127.0.0.1", 4321)
            # The same client address is answered now (LXD: not for 30 minutes).
            assert await _exchange(client, ("127.0.0.1", 1234), b"now?") == (
                b"now?", ("127.0.0.1", 1234))
            reply, _ = await _exchange(client, ("127.0.0.1", 1234), big)
            assert reply == big  # LXD: truncated to 32768 bytes
        finally:
            await fwd.stop_all()

    try:
        run("uvloop", main())
    finally:
        client.close()


def test_device_stop_closes_every_session_socket(lab):
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    clients = [_client(lab.host) for _ in range(5)]
    device = proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321")

    async def main():
        fwd = Forwarder()
        # Warm up once, so the namespace threads and helpers exist before we count.
        key = await started(fwd, "u", device, host=lab.host, inst=inst)
        await fwd.stop(key)
        before = open_fds()
        key = await started(fwd, "u", device, host=lab.host, inst=inst)
        for i, client in enumerate(clients):
            assert (await _exchange(client, ("127.0.0.1", 1234), b"%d" % i))[0] == b"%d" % i
        assert len(open_fds() - before) >= 1 + len(clients)  # listener + one per session
        await fwd.stop(key)
        assert open_fds() == before

    try:
        run("uvloop", main())
    finally:
        for client in clients:
            client.close()
