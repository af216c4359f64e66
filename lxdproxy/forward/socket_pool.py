"""Unconnected target sockets made ahead of need inside another network namespace.

A socket belongs to the netns it was created in, so a device whose target lives in an instance
needs a thread inside that netns to make each target socket. One thread hop per connection costs
about 80 µs of CPU (executor submit, futex wake, eventfd wake of the loop): measured, a third of
the daemon's per-connection cost. Even a hop per batch costs 2-3 futex calls per socket: each
socket() in the netns thread lets go of the GIL, and the loop thread wants it back. So only the
first batch is made by the netns thread, which also opens an fd of its netns for the pool; every
later batch is made on the loop thread itself, which enters that netns (setns, a per-thread
change for a network namespace), makes the batch and goes back: two setns per batch, no thread.
The daemon's own netns needs no pool: the socket is made inline.

Each device owns its pools (closed with the device); nothing is made until the first connection,
so an idle device holds no extra fds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from lxdproxy.netns import NetnsExecutor
from lxdproxy.netns.setns import CLONE_NEWNET, setns

log = logging.getLogger(__name__)

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


def _first_batch(family: int, sock_type: int, n: int) -> tuple[int, list[socket.socket]]:
    """In the netns thread: an fd of its netns (for the later batches) and a batch."""
    ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ns_fd, _make_batch(family, sock_type, n)
    except BaseException:
        os.close(ns_fd)
        raise


def _make_batch_in(ns_fd: int, family: int, sock_type: int, n: int) -> list[socket.socket]:
    """On the calling thread, inside the netns ``ns_fd``; the thread's own netns afterwards."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(ns_fd, CLONE_NEWNET)
        try:
            return _make_batch(family, sock_type, n)
        finally:
            try:
                setns(own, CLONE_NEWNET)
            except OSError:
                # Cannot happen (we left it a moment ago, with the same rights); were it to,
                # this thread would make every later socket in the instance's netns.
                log.critical("cannot return to the daemon's network namespace: aborting")
                os.abort()
    finally:
        os.close(own)


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
        self._refill: asyncio.Task[tuple[int, list[socket.socket]]] | None = None
        self._ns_fd: int | None = None  # the target netns; from the first batch on
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> socket.socket | None:
        """A ready socket, or None when the pool is empty (a refill is under way then)."""
        if not self._ready:
            if self._ns_fd is None:
                self._start_refill()
                return None
            try:
                self._ready = _make_batch_in(self._ns_fd, self.family, self.sock_type, BATCH)
            except OSError:
                return None  # out of fds: get() falls back to a direct hop (and says why)
        return self._ready.pop()

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
            self.executor.run(_first_batch, self.family, self.sock_type, BATCH))
        self._refill = task
        task.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[tuple[int, list[socket.socket]]]) -> None:
        self._refill = None
        if task.cancelled() or task.exception() is not None:
            return  # out of fds or the netns is gone: get() falls back to a direct hop (and says why)
        ns_fd, made = task.result()
        if self._closed:
            os.close(ns_fd)
            for sock in made:
                sock.close()
            return
        self._ns_fd = ns_fd
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
            # The netns fd in it is _refilled's to close (a raw fd: closing twice could close
            # someone else's); sockets close idempotently.
            for sock in refill.result()[1]:
                sock.close()  # idempotent: _refilled may have closed them already
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None
        ready, self._ready = self._ready, []
        for sock in ready:
            sock.close()
