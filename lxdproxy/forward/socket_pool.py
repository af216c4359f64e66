"""Unconnected target sockets made ahead of need inside another network namespace.

A socket belongs to the netns it was created in, so a device whose target lives in an instance
needs a thread inside that netns to make each target socket. One thread hop per connection costs
about 80 µs of CPU (executor submit, futex wake, eventfd wake of the loop): measured, a third of
the daemon's per-connection cost. The pool makes them in batches, one hop per batch, started
before the pool runs dry, so the accept path normally takes a ready socket without waiting.
The daemon's own netns needs no pool: the socket is made inline.

Each device owns its pools (closed with the device); nothing is made until the first connection,
so an idle device holds no extra fds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from lxdproxy.netns import NetnsExecutor

BATCH = 16  # sockets per refill (one executor round trip)
LOW_WATER = 4  # refill when fewer are left


def _make_batch(family: int, sock_type: int, n: int) -> list[socket.socket]:
    made: list[socket.socket] = []
    try:
        for _ in range(n):
            # SOCK_NONBLOCK at creation: no later FIONBIO ioctl on the loop thread.
            made.append(socket.socket(family, sock_type | socket.SOCK_NONBLOCK))
    except OSError:
        if not made:
            raise  # out of fds: say so; a partial batch is still useful
    return made


def new_socket(family: int, sock_type: int) -> socket.socket:
    """A non-blocking socket in the caller's netns."""
    return socket.socket(family, sock_type | socket.SOCK_NONBLOCK)


class SocketPool:
    """Ready, unconnected, non-blocking sockets of one (netns, family, type)."""

    def __init__(self, executor: NetnsExecutor, family: int, sock_type: int) -> None:
        self.executor = executor
        self.family = family
        self.sock_type = sock_type
        self._ready: list[socket.socket] = []
        self._refill: asyncio.Task[list[socket.socket]] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> socket.socket | None:
        """A ready socket, or None when the pool is empty (a refill is under way then)."""
        if len(self._ready) <= LOW_WATER:
            self._start_refill()
        return self._ready.pop() if self._ready else None

    async def get(self) -> socket.socket:
        """A socket from the pool, or (pool empty) one made by a direct hop."""
        sock = self.take()
        if sock is not None:
            return sock
        return await self.executor.run(new_socket, self.family, self.sock_type)

    def _start_refill(self) -> None:
        if self._refill is not None or self._closed:
            return
        task = asyncio.ensure_future(
            self.executor.run(_make_batch, self.family, self.sock_type, BATCH))
        self._refill = task
        task.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[list[socket.socket]]) -> None:
        self._refill = None
        if task.cancelled() or task.exception() is not None:
            return  # out of fds or the netns is gone: get() falls back to a direct hop (and says why)
        made = task.result()
        if self._closed:
            for sock in made:
                sock.close()
            return
        self._ready.extend(made)

    async def close(self) -> None:
        """Close every pooled socket, waiting for a refill still in flight (its batch too)."""
        self._closed = True
        refill = self._refill
        if refill is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(refill)
        if refill is not None and refill.done() and not refill.cancelled() \
                and refill.exception() is None:
            for sock in refill.result():
                sock.close()  # idempotent: _refilled may have closed them already
        ready, self._ready = self._ready, []
        for sock in ready:
            sock.close()
