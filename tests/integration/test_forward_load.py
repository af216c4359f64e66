"""1,000 concurrent connections through one device, then every fd is given back."""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import AsyncIterator

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import fd_count, roundtrip, started
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.netns import netns_executor

pytestmark = pytest.mark.lab

N = 1000


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=10)
    yield f
    await f.stop_all()


@pytest.fixture
def many_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 16 * N))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _settled_fds(fwd: Forwarder, expect: int | None = None) -> int:
    """Open fds other than ready target sockets, once no refill batch is in flight: the pool
    makes target sockets 16 at a time in another thread, so for a moment some exist that it
    does not count yet. Two equal reads 50 ms apart (or ``expect``) end the wait."""
    last = -1
    for _ in range(40):
        now = fd_count() - fwd.pooled_sockets()
        if now == expect or now == last:
            return now
        last = now
        await asyncio.sleep(0.05)
    return last


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_thousand_concurrent_connections_then_fds_back_to_baseline(
    lab: Lab, fwd: Forwarder, many_fds: None
) -> None:
    loop = asyncio.get_running_loop()
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    key = await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321"),
                        host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"warm") == b"warm"
    for _ in range(200):  # the warm-up connection's relay closes right after its EOF
        if fwd.open_connections(key) == 0:
            break
        await asyncio.sleep(0.01)
    baseline = await _settled_fds(fwd)

    host = netns_executor(lab.host.namespaces.net)
    clients = await host.run(lambda: [socket.socket() for _ in range(N)])
    try:
        for s in clients:
            s.setblocking(False)

        async def open_and_echo(i: int, s: socket.socket) -> None:
            await loop.sock_connect(s, ("127.0.0.1", 1234))
            msg = f"client {i}\n".encode()
            await loop.sock_sendall(s, msg)
            assert await _recv_exactly(loop, s, len(msg)) == msg

        await asyncio.wait_for(asyncio.gather(*(open_and_echo(i, s)
                                                for i, s in enumerate(clients))), 60)
        # Every client has had its echo and none has closed: all N are open at once.
        assert fwd.open_connections(key) == N

        async def finish(s: socket.socket) -> None:
            s.shutdown(socket.SHUT_WR)
            assert await loop.sock_recv(s, 10) == b""  # the backend's EOF came through
            s.close()

        await asyncio.wait_for(asyncio.gather(*(finish(s) for s in clients)), 60)
    finally:
        for s in clients:
            s.close()
    for _ in range(200):
        if fwd.open_connections(key) == 0:
            break
        await asyncio.sleep(0.02)
    assert fwd.open_connections(key) == 0
    assert await _settled_fds(fwd, expect=baseline) == baseline
    assert fwd.stats().accepted == N + 1
