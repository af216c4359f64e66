"""One control connection (unix stream socket) carrying protocol frames and SCM_RIGHTS fds.

The kernel attaches the fds to the first byte of the frame's ``sendmsg``; the receiver collects
every fd that arrives into a queue and gives each envelope the ``fds`` it announces, in order.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from lxdproxy.workers.protocol import Envelope, FrameDecoder, ProtocolError, encode

RECV_SIZE = 256 * 1024
MAX_FDS_PER_RECV = 253  # SCM_MAX_FD


class ChannelClosed(ConnectionError):
    """The peer went away."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder()
        self._ready: list[Envelope] = []
        self._fds: list[int] = []
        self._send_lock = asyncio.Lock()
        self._waits: dict[asyncio.Future[None], Callable[[int], object]] = {}  # -> its unwatch
        self.closed = False

    async def send(self, env: Envelope, fds: list[int] | tuple[int, ...] = ()) -> None:
        data = encode(Envelope(env.id, env.message, fds=len(fds), version=env.version))
        async with self._send_lock:
            view = memoryview(data)
            first = True
            while view:
                try:
                    if first and fds:
                        sent = socket.send_fds(self.sock, [view], list(fds))
                    else:
                        sent = self.sock.send(view)
                except (BlockingIOError, InterruptedError):
                    await self._wait(self._loop.add_writer, self._loop.remove_writer)
                    continue
                except OSError as exc:
                    raise ChannelClosed(str(exc)) from None
                first = False
                view = view[sent:]

    async def _wait(self, watch: Callable[..., object], unwatch: Callable[[int], object]) -> None:
        """Until the loop's ``watch`` (add_reader or add_writer) fires for the socket."""
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        watch(fd, _set, fut)
        self._waits[fut] = unwatch
        try:
            await fut
        finally:
            if self._waits.pop(fut, None) is not None:
                unwatch(fd)

    async def recv(self) -> tuple[Envelope, list[int]]:
        """The next envelope and the fds that came with it (the caller owns them)."""
        while not self._ready:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    RECV_SIZE, socket.CMSG_SPACE(MAX_FDS_PER_RECV * 4))
            except (BlockingIOError, InterruptedError):
                await self._wait(self._loop.add_reader, self._loop.remove_reader)
                continue
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise ChannelClosed("peer closed the control connection")
            self._ready.extend(self._decoder.feed(data))
        env = self._ready.pop(0)
        if env.fds > len(self._fds):
            raise ProtocolError(f"frame announced {env.fds} fds, {len(self._fds)} arrived")
        fds, self._fds = self._fds[:env.fds], self._fds[env.fds:]
        return env, fds

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Unwatch before the fd is closed: its number is reused by the next socket, and a watch
        # left behind would fire for (and then unregister) that socket's own watch.
        sock_fd = self.sock.fileno()
        for fut, unwatch in list(self._waits.items()):
            unwatch(sock_fd)
            if not fut.done():
                fut.set_exception(ChannelClosed("control connection closed"))
        self._waits.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self.sock.close()


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
