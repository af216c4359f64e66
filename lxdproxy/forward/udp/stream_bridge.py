"""stream->udp: one accepted tcp or unix connection relayed to a connected UDP socket.

Each chunk read from the stream becomes one datagram (no framing, as LXD's forkproxy), with an
optional PROXY v2 DGRAM header in front; replies flow back into the stream.

Where we differ from LXD on purpose (spec §4.4): after the client's half-close, replies keep
flowing (checklist H needs that, and LXD gets it by never closing), but the relay ends after
``idle_timeout`` without traffic either way or as soon as the client has fully closed; LXD
lingers until the UDP socket errors or a reply write fails. An ICMP error from the target does
not end the connection: the server may come up, and the client may send again.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.limits import UDP_IDLE_TIMEOUT
from lxdproxy.forward.rate_limited_log import RateLimitedLog

log = logging.getLogger("lxdproxy.forward.udp.listener")

MAX_DATAGRAM = 65536
# The largest UDP payload: one stream chunk (plus header) must fit in one datagram.
MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
# Replies handled per wakeup, so one busy socket cannot starve the rest of the loop.
BATCH = 256
# Stream reads per wakeup (each up to 64 KiB).
STREAM_BATCH = 16
# After the client's half-close a TCP/unix peer's full close raises no read event, so the
# relay polls for POLLHUP/POLLERR this often.
HANGUP_POLL_INTERVAL = 1.0
# Timers may fire this much early (asyncio rounds to its clock resolution).
_TIMER_SLACK = 1e-3


async def relay_stream_to_datagram(
    stream_sock: socket.socket,
    dgram_sock: socket.socket,
    *,
    header: bytes | None = None,
    idle_timeout: float = UDP_IDLE_TIMEOUT,
    counters: DeviceCounters | None = None,
) -> None:
    """tcp->udp or unix->udp for one accepted connection; closes both sockets at the end.

    Each chunk read from the stream becomes one datagram (no framing, as LXD), with
    ``header`` (a PROXY v2 DGRAM header) in front when given; replies flow back into the
    stream. After the client's half-close, replies keep flowing (LXD checklist H: the UDP
    reply arrives after the half-close) until ``idle_timeout`` without traffic either way or
    until the client has fully closed. ``counters`` (the device's) counts the datagrams and
    bytes each way and the drops.
    """
    try:
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout!r}")
        relay = _StreamToDatagram(stream_sock, dgram_sock, header, float(idle_timeout),
                                  counters if counters is not None else DeviceCounters())
    except BaseException:
        # The caller handed both sockets over: they are ours to close, even on bad arguments.
        stream_sock.close()
        dgram_sock.close()
        raise
    await relay.run()


class _StreamToDatagram:
    def __init__(self, stream: socket.socket, dgram: socket.socket, header: bytes | None,
                 idle: float, counters: DeviceCounters) -> None:
        self._counters = counters
        self._stream = stream
        self._dgram = dgram
        self._sfd = stream.fileno()
        self._dfd = dgram.fileno()
        self._header = header or None
        self._idle = idle
        hlen = len(header) if header else 0
        self._chunk = MAX_PAYLOAD.get(dgram.family, 65507) - hlen  # one chunk = one datagram
        if self._chunk <= 0:
            raise ValueError("PROXY header leaves no room for data in a datagram")
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self._to_dgram: deque[bytes] = deque()  # datagrams waiting for the UDP socket
        self._to_stream: deque[bytes] = deque()  # reply bytes waiting for the stream
        self._eof = False
        self._reading: set[int] = set()  # the fds the loop reads now
        self._last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._log = RateLimitedLog(log, "stream->udp relay")

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            self._stream.setblocking(False)
            self._dgram.setblocking(False)
            self._last = loop.time()
            self._resume_stream()
            self._resume_dgram()
            self._arm_timer()
            await self._done
        finally:
            self._teardown()

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _teardown(self) -> None:
        loop = self._loop
        if self._timer is not None:
            self._timer.cancel()
        if loop is not None:
            for fd in (self._sfd, self._dfd):
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self._stream.close()
        self._dgram.close()

    def _read(self, fd: int, on_readable: Callable[[], None] | None) -> None:
        """Read ``fd`` with ``on_readable``, or stop reading it (None); a repeat is a no-op."""
        if on_readable is None:
            if fd in self._reading:
                self._reading.discard(fd)
                self._loop.remove_reader(fd)  # type: ignore[union-attr]
        elif fd not in self._reading:
            self._reading.add(fd)
            self._loop.add_reader(fd, on_readable)  # type: ignore[union-attr]

    def _resume_stream(self) -> None:
        if not self._eof:
            self._read(self._sfd, self._on_stream_readable)

    def _pause_stream(self) -> None:
        self._read(self._sfd, None)

    def _resume_dgram(self) -> None:
        self._read(self._dfd, self._on_dgram_readable)

    def _pause_dgram(self) -> None:
        self._read(self._dfd, None)

    def _on_stream(self, op: Callable[..., int], *args: Any, failure: str) -> int | None:
        """``op(*args)`` on the stream: its result, or None when it would block or failed. A
        failure is logged (``failure`` with the error) and ends the relay."""
        try:
            return op(*args)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self._log.info(failure, e)
            self._finish()
            return None

    # -- stream -> datagram ------------------------------------------------------------

    def _on_stream_readable(self) -> None:
        self._last = self._loop.time()  # type: ignore[union-attr]
        for _ in range(STREAM_BATCH):
            n = self._on_stream(self._stream.recv_into, self._buf, self._chunk,
                                failure="client connection failed: %s")
            if n is None:
                return
            if n == 0:
                # Half-close: the UDP side has no EOF to pass on, and replies may still come.
                self._pause_stream()
                self._eof = True
                self._arm_timer()
                return
            self._counters.datagrams_in += 1
            self._counters.bytes_in += n
            if not self._send_datagram(self._view[:n]):
                # The UDP socket is full: stop reading so TCP pushes back on the client.
                self._pause_stream()
                return

    def _send_datagram(self, data: memoryview) -> bool:
        """Send one datagram now, or queue it; False when it had to be queued."""
        for _attempt in range(2):
            try:
                if self._header is None:
                    self._dgram.send(data)
                else:
                    self._dgram.sendmsg((self._header, data))
                return True
            except (BlockingIOError, InterruptedError):
                self._to_dgram.append((self._header or b"") + bytes(data))
                self._loop.add_writer(self._dfd, self._on_dgram_writable)  # type: ignore[union-attr]
                return False
            except ConnectionRefusedError:
                # ICMP unreachable for an earlier datagram; the socket stays usable and the
                # target may be back: send this one again.
                continue
            except OSError as e:
                self._log.warning("datagram dropped: %s", e)
                self._counters.datagrams_dropped += 1
                return True
        self._counters.datagrams_dropped += 1  # refused twice
        return True

    def _on_dgram_writable(self) -> None:
        queue = self._to_dgram
        while queue:
            try:
                self._dgram.send(queue[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._log.warning("datagram dropped: %s", e)
                self._counters.datagrams_dropped += 1
            queue.popleft()
        self._loop.remove_writer(self._dfd)  # type: ignore[union-attr]
        self._resume_stream()

    def _rearm_dgram(self) -> None:
        if self._done is None or self._done.done():
            return
        loop = self._loop
        loop.remove_reader(self._dfd)  # type: ignore[union-attr]
        loop.remove_writer(self._dfd)  # type: ignore[union-attr]
        if self._dfd in self._reading:
            loop.add_reader(self._dfd, self._on_dgram_readable)  # type: ignore[union-attr]
        if self._to_dgram:
            loop.add_writer(self._dfd, self._on_dgram_writable)  # type: ignore[union-attr]

    # -- datagram -> stream ------------------------------------------------------------

    def _on_dgram_readable(self) -> None:
        self._last = self._loop.time()  # type: ignore[union-attr]
        for _ in range(BATCH):
            try:
                n = self._dgram.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                # ICMP unreachable: nobody listens yet, but the client may retry later.
                # uvloop (libuv) stops polling an fd that reported POLLERR, even after the
                # callback consumed the error: register it again once this callback is over.
                self._loop.call_soon(self._rearm_dgram)  # type: ignore[union-attr]
                continue
            except OSError as e:
                self._log.warning("target socket failed: %s", e)
                self._finish()
                return
            self._counters.datagrams_out += 1
            self._counters.bytes_out += n
            try:
                sent = self._stream.send(self._view[:n])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:  # EPIPE / ECONNRESET: the client has gone away
                self._log.info("client connection closed: %s", e)
                self._finish()
                return
            if sent < n:
                # The stream is full: keep the rest, stop reading replies until it drains.
                self._to_stream.append(bytes(self._view[sent:n]))
                self._pause_dgram()
                self._loop.add_writer(self._sfd, self._on_stream_writable)  # type: ignore[union-attr]
                return

    def _on_stream_writable(self) -> None:
        queue = self._to_stream
        while queue:
            data = queue[0]
            sent = self._on_stream(self._stream.send, data, failure="client connection closed: %s")
            if sent is None:
                return
            if sent < len(data):
                queue[0] = data[sent:]
                return
            queue.popleft()
        self._loop.remove_writer(self._sfd)  # type: ignore[union-attr]
        self._resume_dgram()

    # -- idle timeout and hang-up --------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop
        now = loop.time()  # type: ignore[union-attr]
        delay = self._last + self._idle - now
        if self._eof:
            delay = min(delay, HANGUP_POLL_INTERVAL)
        self._timer = loop.call_later(max(delay, 0.0), self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()  # type: ignore[union-attr]
        if now + _TIMER_SLACK >= self._last + self._idle:
            self._log.info("idle for %.0f s: closing", self._idle)
            self._finish()
            return
        if self._eof and _hung_up(self._sfd):
            self._finish()
            return
        self._arm_timer()


def _hung_up(fd: int) -> bool:
    """True once the peer has fully closed (unix) or reset (tcp) the connection."""
    poller = select.poll()
    poller.register(fd, 0)  # POLLHUP and POLLERR are always reported
    return any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in poller.poll(0))
