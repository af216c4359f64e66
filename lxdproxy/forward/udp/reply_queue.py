"""Replies of a udp->udp relay, sent from its listen socket back to the clients.

The relay hands over each session's replies of one read (views into the receive buffers) and
they leave straight away, in order: alike ones as one GSO send (``UDP_SEGMENT``), others with
``sendto`` (``sendmsg`` with IP_PKTINFO on a wildcard listener). Only when the socket's send
buffer is full do replies wait here, bounded, for ``add_writer`` to report room. Beyond the
bound they are dropped, as the kernel would.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque

from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.rate_limited_log import RateLimitedLog
from lxdproxy.forward.udp.gso import GSO_REFUSED, gso_runs, segment_cmsg
from lxdproxy.forward.udp.pktinfo import Cmsg
from lxdproxy.forward.udp.session import UdpClientSession

# Datagrams waiting for a full socket send buffer to drain (beyond this they are dropped,
# as the kernel would drop them).
SEND_QUEUE_MAX_DATAGRAMS = 1024


class ReplyQueue:
    """The slow path of sending replies from one listen socket."""

    def __init__(self, sock: socket.socket, log: RateLimitedLog,
                 counters: DeviceCounters) -> None:
        self._sock = sock
        self._counters = counters
        self._fd = sock.fileno()
        self._log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[tuple[bytes, tuple, list[Cmsg] | None]] = deque()

    def __bool__(self) -> bool:
        """True while replies are waiting (new ones must queue behind them)."""
        return bool(self._queue)

    def send_batch(self, loop: asyncio.AbstractEventLoop, s: UdpClientSession,
                   batch: list[memoryview]) -> None:
        """Send one session's replies of one read to its client, in order."""
        client, cmsg = s.client, s.reply_cmsg
        runs = gso_runs([len(d) for d in batch], s.reply_gso_max) if len(batch) > 1 else [(0, 1)]
        for start, count in runs:
            if self._queue:  # behind what waits already
                for d in batch[start:]:
                    self.put(loop, d, client, cmsg)
                return
            if count == 1:
                self._send(loop, batch[start], client, cmsg)
                continue
            run = batch[start:start + count]
            size = len(run[0])
            try:
                self._sock.sendmsg(run, (cmsg or []) + segment_cmsg(size), 0, client)
            except (BlockingIOError, InterruptedError):
                for d in run:
                    self.put(loop, d, client, cmsg)
            except OSError as e:
                if e.errno in GSO_REFUSED:  # the path to the client takes no such segments
                    s.reply_gso_max = size - 1
                for d in run:  # one by one, each with its own error handling
                    self._send(loop, d, client, cmsg)

    def _send(self, loop: asyncio.AbstractEventLoop, data: memoryview, client: tuple,
              cmsg: list[Cmsg] | None) -> None:
        try:
            self._send_now(data, client, cmsg)
        except (BlockingIOError, InterruptedError):
            self.put(loop, data, client, cmsg)
        except OSError as e:
            self.failed(data, client, cmsg, e)

    def _send_now(self, data: memoryview | bytes, client: tuple, cmsg: list[Cmsg] | None) -> None:
        if cmsg is None:
            self._sock.sendto(data, client)
        else:
            self._sock.sendmsg((data,), cmsg, 0, client)

    def put(self, loop: asyncio.AbstractEventLoop, data: memoryview | bytes, client: tuple,
            cmsg: list[Cmsg] | None) -> None:
        """Queue a reply the socket could not take now."""
        if len(self._queue) >= SEND_QUEUE_MAX_DATAGRAMS:
            self._log.warning("listen socket is not draining: reply dropped")
            self._counters.datagrams_dropped += 1
            return
        if not self._queue:
            self._loop = loop
            loop.add_writer(self._fd, self._on_writable)
        self._queue.append((bytes(data), client, cmsg))

    def failed(self, data: memoryview | bytes, client: tuple, cmsg: list[Cmsg] | None,
               err: OSError) -> None:
        """A send failed with something other than EAGAIN."""
        if cmsg is not None and err.errno == errno.EINVAL:
            # The address it reached cannot be a source (e.g. IPv6 multicast): let routing
            # choose, as a plain sendto does.
            try:
                self._sock.sendto(data, client)
                return
            except OSError as e:
                err = e
        self._log.warning("reply to %r failed, datagram dropped: %s", client, err)
        self._counters.datagrams_dropped += 1

    def clear(self) -> None:
        if self._queue and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._queue.clear()

    def _on_writable(self) -> None:
        queue = self._queue
        while queue:
            data, client, cmsg = queue[0]
            try:
                self._send_now(data, client, cmsg)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.failed(data, client, cmsg, e)
            queue.popleft()
        self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
