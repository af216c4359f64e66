"""The stream relay over real kernel sockets (unix socketpairs: no network, no namespaces needed).

Layout: app_client <-> [client | relay | target] <-> app_target.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import resource
import socket

import pytest

from lab.forwarding import fd_count as _fd_count
from lxdproxy.forward.relay_state import Side
from lxdproxy.forward.stream_relay import PIPE_SIZE, SPLICE_AFTER, RelayMode, StreamRelay


class Pair:
    def __init__(self, mode: RelayMode) -> None:
        self.app_client, relay_client = socket.socketpair()
        relay_target, self.app_target = socket.socketpair()
        for s in (self.app_client, self.app_target):
            s.setblocking(False)
        self.reasons: list[str] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.relay = StreamRelay(relay_client, relay_target, mode=mode, on_close=self._closed)
        self.relay.start()

    def _closed(self, relay: StreamRelay, reason: str) -> None:
        self.reasons.append(reason)
        self.closed.set_result(reason)

    def close_apps(self) -> None:
        self.app_client.close()
        self.app_target.close()


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 16):
        out += chunk
    return bytes(out)


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
@pytest.mark.parametrize("mode", list(RelayMode))
async def test_bulk_both_ways_then_half_close_answer_arrives(mode: RelayMode) -> None:
    before = _fd_count()
    loop = asyncio.get_running_loop()
    p = Pair(mode)
    up = os.urandom(3 * 1024 * 1024 + 17)
    down = os.urandom(SPLICE_AFTER + 100_000)

    async def target_side() -> None:
        # A server that answers only after the client's EOF (LXD's unix relay loses this answer).
        got = await _read_to_eof(p.app_target)
        assert got == up
        # Bulk back too (over SPLICE_AFTER), so both directions get to splice.
        await loop.sock_sendall(p.app_target, b"answer:" + got[:1000] + down)
        p.app_target.shutdown(socket.SHUT_WR)

    server = asyncio.create_task(target_side())
    await loop.sock_sendall(p.app_client, up)
    p.app_client.shutdown(socket.SHUT_WR)
    answer = await asyncio.wait_for(_read_to_eof(p.app_client), 20)
    await server
    assert answer == b"answer:" + up[:1000] + down
    assert await asyncio.wait_for(p.closed, 5) == "both directions finished"
    assert p.relay.mode == {side: mode for side in p.relay.mode}
    p.close_apps()
    assert _fd_count() == before


async def _send_until_refused(sock: socket.socket, quiet: float = 0.3) -> int:
    """Send until the socket takes nothing for ``quiet`` seconds; the bytes it took."""
    chunk = b"\x5a" * 65536
    sent = 0
    idle_since = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - idle_since < quiet:
        try:
            sent += sock.send(chunk)
            idle_since = asyncio.get_running_loop().time()
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return sent


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
@pytest.mark.parametrize("mode", list(RelayMode))
async def test_a_reader_that_stops_stops_the_reads_from_its_source(mode: RelayMode) -> None:
    # Back-pressure: the target app reads nothing, so the relay must stop reading the client once
    # its window (the pipe, or one copy buffer) is full; then the client's socket refuses more.
    # What the client got rid of is bounded by the socket buffers and that one window.
    p = Pair(mode)
    sent = await _send_until_refused(p.app_client)
    assert SPLICE_AFTER < sent < PIPE_SIZE + (3 << 20)
    client_side = p.relay.directions[Side.CLIENT].state
    assert 0 < client_side.buffered <= max(client_side.window, 65536)
    assert not client_side.want_read()
    # Nothing was lost on the way: the target gets every byte once it reads.
    p.app_client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_to_eof(p.app_target), 5) == b"\x5a" * sent
    p.relay.close()
    p.close_apps()


async def test_writing_to_a_dead_target_closes_both_sides() -> None:
    loop = asyncio.get_running_loop()
    p = Pair(RelayMode.SPLICE)
    p.app_target.close()
    # A full close looks like a half-close from here: the client sees EOF and may still talk...
    assert await asyncio.wait_for(_read_to_eof(p.app_client), 5) == b""
    assert not p.closed.done()
    # ...but what it sends cannot be delivered (EPIPE): the relay gives up on both sides.
    await loop.sock_sendall(p.app_client, b"anyone there?")
    assert (await asyncio.wait_for(p.closed, 5)).startswith("target: ")
    p.close_apps()


async def test_close_from_outside_releases_everything() -> None:
    before = _fd_count()
    p = Pair(RelayMode.SPLICE)
    p.relay.close("device stopped")
    assert p.reasons == ["device stopped"]
    assert await asyncio.wait_for(_read_to_eof(p.app_client), 5) == b""
    p.close_apps()
    assert _fd_count() == before


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_splice_einval_falls_back_to_copy_without_losing_bytes() -> None:
    # The kernel refuses splice into a file opened O_APPEND (EINVAL) - for sockets too. The first
    # chunk is then already in the pipe and must come out through the copy path.
    loop = asyncio.get_running_loop()
    app_client, relay_client = socket.socketpair()
    relay_target, app_target = socket.socketpair()
    flags = fcntl.fcntl(relay_target.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(relay_target.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
    relay = StreamRelay(relay_client, relay_target, mode=RelayMode.SPLICE)
    relay.start()
    app_client.setblocking(False)
    app_target.setblocking(False)
    # Past SPLICE_AFTER, so the client direction tries splice (and the target direction, whose
    # destination is an ordinary socket, splices fine).
    data = os.urandom(SPLICE_AFTER + 400_000)
    back = os.urandom(SPLICE_AFTER + 400_000)

    async def send_back() -> None:
        await loop.sock_sendall(app_target, back)
        app_target.shutdown(socket.SHUT_WR)

    sender = asyncio.create_task(send_back())
    receiver = asyncio.create_task(_read_to_eof(app_client))
    forwarded = asyncio.create_task(_read_to_eof(app_target))
    await asyncio.wait_for(loop.sock_sendall(app_client, data), 5)
    app_client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(forwarded, 5) == data
    await asyncio.wait_for(sender, 5)
    assert await asyncio.wait_for(receiver, 5) == back
    assert relay.mode[Side.CLIENT] is RelayMode.COPY
    assert relay.mode[Side.TARGET] is RelayMode.SPLICE
    assert relay.fallbacks == 1
    relay.close()
    app_client.close()
    app_target.close()


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_rights_mode_carries_fds_and_closes_our_copies() -> None:
    p = Pair(RelayMode.RIGHTS)
    r, w = os.pipe()
    baseline = _fd_count()
    fds = array.array("i", [r, w])
    p.app_client.setblocking(True)
    p.app_client.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    p.app_target.setblocking(True)
    msg, anc, _flags, _ = await asyncio.to_thread(
        p.app_target.recvmsg, 100, socket.CMSG_SPACE(2 * fds.itemsize)
    )
    assert msg == b"fds"
    got = array.array("i")
    got.frombytes(anc[0][2])
    assert len(got) == 2
    # The fds work end to end: write into the received write end, read from our read end.
    os.write(got[1], b"through")
    assert os.read(r, 100) == b"through"
    for fd in got:
        os.close(fd)
    # The relay closed its own copies: only the two fds we received (now closed) were added.
    assert _fd_count() == baseline
    os.close(r)
    os.close(w)
    p.relay.close()
    p.close_apps()


async def test_out_of_fds_for_a_pipe_falls_back_to_copy() -> None:
    # Pipes are made lazily, after SPLICE_AFTER bytes; if the process is out of fds by then, that
    # direction copies instead of failing the connection.
    loop = asyncio.get_running_loop()
    p = Pair(RelayMode.SPLICE)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard))
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        # Past SPLICE_AFTER: that is when the direction wants its pipe.
        data = os.urandom(SPLICE_AFTER + 300_000)
        reader = asyncio.create_task(_read_to_eof(p.app_target))
        await loop.sock_sendall(p.app_client, data)
        p.app_client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(reader, 5) == data
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert p.relay.mode[Side.CLIENT] is RelayMode.COPY
    assert p.relay.fallbacks == 1
    p.relay.close()
    p.close_apps()
