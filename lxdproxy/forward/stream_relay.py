"""Moves bytes between two connected stream sockets; the decisions live in ``relay_state``.

Three ways to move a direction's bytes, chosen per relay:

- ``COPY`` (the default): ``recv_into`` a 1 MiB buffer shared by all relays, ``send`` from it.
  Measured against SPLICE on this project's machine (kernel 6.18, loopback on both sides of the
  proxy as on an LXD host; benchmarks/analysis.md): a single stream 29% faster, 8% less proxy CPU
  per GiB and 27% less for the receiving application, whose reads find the bytes still in cache
  (zero-copy hands it pages the sender wrote long before). 64 KiB copies cost more CPU than splice.
- ``SPLICE`` (``lxdproxy serve --relay splice``): ``os.splice`` socket -> pipe -> socket
  (zero-copy; the pipe is 1 MiB via ``F_SETPIPE_SZ``). Each direction starts in ``COPY`` and
  switches to splice once it has moved ``SPLICE_AFTER`` bytes: most connections are short, and two
  pipes per connection (pipe2 + F_SETPIPE_SZ + 4 closes) cost more than copying a few KiB.
  A socket that cannot splice answers EINVAL; that direction then falls back to ``COPY``
  without losing a byte (anything already in the pipe is drained into the copy buffer).
- ``RIGHTS``: unix <-> unix with ``recvmsg``/``sendmsg`` so SCM_RIGHTS file descriptors travel
  with their bytes (as LXD's unix relay does); our copies are closed once sent.

Everything is driven by ``loop.add_reader``/``add_writer`` callbacks (no task per direction), which
works the same on asyncio's selector loop and on uvloop.
"""

from __future__ import annotations

import array
import asyncio
import enum
import errno
import fcntl
import logging
import mmap
import os
import socket
from collections.abc import Callable

from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.relay_state import (
    CloseAll,
    Command,
    DirectionState,
    RelayState,
    ShutdownWrite,
    Side,
)

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20
COPY_BUFFER = 1 << 20  # COPY: one read's worth (64 KiB reads cost more CPU per GiB than splice)
RIGHTS_BUFFER = 64 * 1024  # RIGHTS: each relay's own buffer (fds ride with their bytes)
SPLICE_AFTER = 256 * 1024  # a SPLICE direction copies this much before it makes its pipe
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# Room for the most fds one SCM_RIGHTS message can carry (SCM_MAX_FD = 253).
RIGHTS_ANCILLARY = socket.CMSG_SPACE(253 * array.array("i").itemsize)

# COPY reads land in this one buffer, shared by every relay on the loop (one thread): a read is
# written out straight away, and only what the destination did not take is copied into the
# direction's own buffer. A connection then costs no buffer of its own while its writes keep up.
# Anonymous memory, not a bytearray (whose zero fill would make all of it resident): a page counts
# only once a read has written it, so a control plane that imports this and relays nothing, or a
# worker whose reads are small, does not carry the whole MiB.
_SCRATCH = mmap.mmap(-1, COPY_BUFFER)


class RelayMode(enum.Enum):
    SPLICE = "splice"
    COPY = "copy"
    RIGHTS = "rights"

    @property
    def fds_per_connection(self) -> int:
        """At most: client + target, and with SPLICE one pipe (2 fds) per direction."""
        return 6 if self is RelayMode.SPLICE else 2


# What an operator chooses for stream devices (`serve --relay`); RIGHTS follows from unix -> unix.
STREAM_MODES = (RelayMode.COPY, RelayMode.SPLICE)


class _Direction:
    """The I/O of one direction; asks ``RelayState`` what to do after each step."""

    def __init__(self, relay: StreamRelay, source: Side, mode: RelayMode) -> None:
        self.relay = relay
        self.state: DirectionState = relay.state.direction(source)
        self.src = relay.socks[source]
        self.dst = relay.socks[source.other]
        self.src_fd = self.src.fileno()
        self.dst_fd = self.dst.fileno()
        # SPLICE starts as COPY; the pipe is made on the first read after SPLICE_AFTER bytes.
        self.mode = RelayMode.COPY if mode is RelayMode.SPLICE else mode
        self.splice_later = mode is RelayMode.SPLICE
        self.reading = False
        self.writing = False
        self.pipe: tuple[int, int] | None = None
        # COPY: _SCRATCH, or our own copy (bytes) of what a partial write left; RIGHTS: our own
        self.buf: bytearray | bytes | mmap.mmap | None = None
        self.start = 0  # COPY/RIGHTS: buffered bytes are buf[start:start + state.buffered]
        self.fds: list[int] = []  # RIGHTS: received fds waiting to go out with the next send
        self.moved = 0
        self.splice_start = 0  # ``moved`` when splicing began
        self.counters = relay.counters
        self.inbound = source is Side.CLIENT  # client -> target: the device's bytes_in
        if mode is RelayMode.RIGHTS:
            self.buf = bytearray(RIGHTS_BUFFER)

    # -- interest ------------------------------------------------------------------------------
    def update_interest(self) -> None:
        loop = self.relay.loop
        want_read, want_write = self.state.want_read(), self.state.want_write()
        if want_read != self.reading:
            _watch(want_read, loop.add_reader, loop.remove_reader, self.src_fd, self.on_readable)
            self.reading = want_read
        if want_write != self.writing:
            _watch(want_write, loop.add_writer, loop.remove_writer, self.dst_fd, self.on_writable)
            self.writing = want_write

    def release(self) -> None:
        """Unregister and free the pipe, buffer and any fds not yet passed on."""
        loop = self.relay.loop
        if self.reading:
            loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dst_fd)
            self.writing = False
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.buf = None

    # -- events --------------------------------------------------------------------------------
    def on_readable(self) -> None:
        if self.relay.closed:
            return
        try:
            n = self._read()
        except (BlockingIOError, InterruptedError):
            if self.mode is RelayMode.SPLICE and self.state.buffered:
                # The socket is readable, so the pipe is out of room (it also runs out of slots
                # before bytes): read again once the destination took something.
                self.state.stall()
                self.update_interest()
            return
        except OSError as exc:
            if (exc.errno == errno.EINVAL and self.mode is RelayMode.SPLICE
                    and self.moved == self.splice_start):
                self._fall_back_to_copy()
                if self.state.buffered:
                    self.on_writable()
                else:
                    self.on_readable()
                return
            self.relay.apply(self.relay.state.error(self.state.source, exc.strerror or str(exc)))
            return
        if n == 0:
            if self.state.read_eof():
                self.update_interest()
                self.relay.apply(self.relay.state.finished(self.state.source))
            else:
                self.update_interest()
            return
        self.state.read(n)
        if self.writing:
            # The destination was full a moment ago: its writable event will flush; only the read
            # interest may change (the pipe's window filled up).
            self.update_interest()
        else:
            self.on_writable()

    def on_writable(self) -> None:
        if self.relay.closed:
            return
        try:
            while self.state.buffered:
                n = self._write()
                self.moved += n
                if self.inbound:
                    self.counters.bytes_in += n
                else:
                    self.counters.bytes_out += n
                if self.state.wrote(n):
                    self.update_interest()
                    self.relay.apply(self.relay.state.finished(self.state.source))
                    return
        except (BlockingIOError, InterruptedError):
            if self.buf is _SCRATCH:
                # The next read (of any relay) reuses the scratch buffer: keep the rest here.
                self.buf = self.buf[self.start : self.start + self.state.buffered]
                self.start = 0
        except OSError as exc:
            if exc.errno == errno.EINVAL and self.mode is RelayMode.SPLICE:
                self._fall_back_to_copy()
                self.on_writable()
                return
            self.relay.apply(self.relay.state.error(self.state.destination, exc.strerror or ""))
            return
        else:
            if self.mode is RelayMode.COPY:
                self.buf = None
                if self.splice_later and self.moved >= SPLICE_AFTER:
                    self.splice_later = False
                    self.mode = RelayMode.SPLICE
                    self.splice_start = self.moved
        self.update_interest()

    # -- the three ways of moving bytes ---------------------------------------------------------
    def _read(self) -> int:
        if self.mode is RelayMode.SPLICE:
            if self.pipe is None:
                try:
                    self.pipe, self.state.window = _make_pipe()
                except OSError:  # out of fds (EMFILE/ENFILE): this direction copies instead
                    self.mode = RelayMode.COPY
                    self.relay.on_fallback()
                    return self._read()
            return os.splice(self.src_fd, self.pipe[1], self.state.room(), flags=SPLICE_FLAGS)
        self.start = 0
        if self.mode is RelayMode.COPY:
            self.buf = _SCRATCH
            return self.src.recv_into(_SCRATCH)
        assert self.buf is not None
        data, ancdata, flags, _addr = self.src.recvmsg(RIGHTS_BUFFER, RIGHTS_ANCILLARY)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            self.relay.warn("file descriptors lost in transfer (ancillary data truncated)")
        self.buf[: len(data)] = data
        return len(data)

    def _write(self) -> int:
        if self.mode is RelayMode.SPLICE:
            assert self.pipe is not None
            return os.splice(self.pipe[0], self.dst_fd, self.state.buffered, flags=SPLICE_FLAGS)
        assert self.buf is not None
        view = memoryview(self.buf)[self.start : self.start + self.state.buffered]
        if self.fds:
            # The fds ride on the first byte that goes out; once sent, our copies are surplus.
            rights = array.array("i", self.fds)
            n = self.dst.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            for fd in self.fds:
                os.close(fd)
            self.fds = []
        else:
            n = self.dst.send(view)
        self.start += n
        return n

    def _fall_back_to_copy(self) -> None:
        """A socket refused splice (EINVAL): move to COPY, keeping whatever sits in the pipe."""
        assert self.pipe is not None
        pending = b""
        if self.state.buffered:
            pending = os.read(self.pipe[0], self.state.buffered)
        for fd in self.pipe:
            os.close(fd)
        self.pipe = None
        self.buf = bytearray(pending) if pending else None
        self.start = 0
        self.state.window = 0
        self.state.stalled = False
        self.mode = RelayMode.COPY
        self.relay.on_fallback()


def _watch(on: bool, add: Callable[..., object], remove: Callable[[int], object], fd: int,
           callback: Callable[[], None]) -> None:
    """Start (``add``: the loop's add_reader or add_writer) or stop watching ``fd``."""
    if on:
        add(fd, callback)
    else:
        remove(fd)


def _make_pipe() -> tuple[tuple[int, int], int]:
    """A non-blocking pipe and its size in bytes."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over /proc/sys/fs/pipe-max-size or the per-user quota: the default size works too.
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return (r, w), size


class StreamRelay:
    """Joins ``client`` and ``target`` (both connected, either may be tcp or unix).

    Takes ownership of both sockets: they are closed when the relay ends (both directions done,
    an error, or ``close()``). ``on_close(relay, reason)`` runs once, from the loop.
    """

    def __init__(
        self,
        client: socket.socket,
        target: socket.socket,
        *,
        mode: RelayMode = RelayMode.COPY,
        on_close: Callable[[StreamRelay, str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        counters: DeviceCounters | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.counters = counters if counters is not None else DeviceCounters()
        self.socks = {Side.CLIENT: client, Side.TARGET: target}
        for sock in self.socks.values():
            if sock.gettimeout() != 0.0:  # callers usually made it non-blocking already
                sock.setblocking(False)
        self.state = RelayState()
        self.closed = False
        self.close_reason = ""
        self.fallbacks = 0
        self._on_close = on_close
        self._warn = warn
        self.directions: dict[Side, _Direction] = {}
        try:
            for side in Side:
                self.directions[side] = _Direction(self, side, mode)
        except BaseException:
            self._release()
            raise

    def start(self) -> None:
        for d in self.directions.values():
            d.update_interest()

    def close(self, reason: str = "closed") -> None:
        self.apply(self.state.abort(reason))

    @property
    def mode(self) -> dict[Side, RelayMode]:
        return {side: d.mode for side, d in self.directions.items()}

    # -- called by the directions --------------------------------------------------------------
    def apply(self, commands: list[Command]) -> None:
        for cmd in commands:
            if self.closed:
                return
            if isinstance(cmd, ShutdownWrite):
                try:
                    self.socks[cmd.side].shutdown(socket.SHUT_WR)
                except OSError as exc:
                    self.apply(self.state.error(cmd.side, f"shutdown: {exc.strerror}"))
            elif isinstance(cmd, CloseAll):
                self._finish(cmd.reason)

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            log.warning("%s", message)

    def on_fallback(self) -> None:
        self.fallbacks += 1

    def _finish(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._release()
        if self._on_close is not None:
            self._on_close(self, reason)

    def _release(self) -> None:
        for d in self.directions.values():
            d.release()
        for sock in self.socks.values():
            sock.close()
