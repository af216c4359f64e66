"""Driving the datagram relay in the lab: UDP peers that record what they saw, target sockets
born in a namespace, and a runner for either event loop.

Sockets are born in the lab's namespaces; the relay under test runs on a real event loop
(asyncio or uvloop) in the test's thread; blocking client calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from lxdproxy.netns import netns_executor

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run(loop_kind: str, coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop_kind]) as runner:
        return runner.run(coro)


def open_fds() -> set[int]:
    """Our open fds (without the one listdir used to read /proc/self/fd)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


def target_opener(place: Any, host: str = "127.0.0.1",
                  family: int = socket.AF_INET) -> Callable[[int], Awaitable[socket.socket]]:
    """An ``open_target`` that makes a connected UDP socket inside ``place``'s netns."""
    ex = netns_executor(place.namespaces.net)

    async def open_target(port: int) -> socket.socket:
        sock = await ex.run(socket.socket, family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((host, port))
        return sock

    return open_target


def udp_listener(place: Any, host: str, family: int = socket.AF_INET) -> socket.socket:
    sock = place.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def udp_client(place: Any, family: int = socket.AF_INET) -> socket.socket:
    sock = place.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(10)
    return sock


async def exchange(client: socket.socket, data: bytes, addr: tuple) -> bytes:
    """Send one datagram and wait (off the loop) for one reply."""
    await asyncio.to_thread(client.sendto, data, addr)
    reply, _ = await asyncio.to_thread(client.recvfrom, 65536)
    return reply


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class UdpRecorder:
    """A UDP echo server on a socket inside a namespace that also records what it saw:
    each datagram and the source address it came from. ``hold`` delays every reply until
    ``release()`` (the reply-after-half-close case)."""

    def __init__(self, place: Any, host: str = "127.0.0.1", port: int = 0,
                 family: int = socket.AF_INET, *, hold: bool = False) -> None:
        self.sock = place.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[bytes, tuple]] = []
        self._release = threading.Event()
        if not hold:
            self._release.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def peers(self) -> list[tuple]:
        return [peer for _data, peer in self.seen]

    def release(self) -> None:
        self._release.set()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.seen.append((data, peer))
            while not self._release.wait(0.1):
                if self._stop.is_set():
                    return
            try:
                self.sock.sendto(data, peer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
