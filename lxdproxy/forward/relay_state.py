"""The stream relay's decisions, with no I/O (mitmproxy-style: events in, commands out).

A relay joins two stream sockets, the *client* (accepted) and the *target* (dialled), and moves
bytes in two directions. The driver (``stream_relay.py``) reports what happened to a direction
(bytes read into its buffer, bytes written out of it, EOF, an error); this module answers with
what to do next. Keeping it pure lets the tests check half-close and shutdown ordering without
sockets.

Why half-close matters: LXD's unix relay and Incus's generic relay close both sockets as soon as
either direction ends, so a client that does ``shutdown(SHUT_WR)`` and waits for the answer loses
it (LXD #15024 fixed the tcp case only). We propagate EOF as ``shutdown(SHUT_WR)`` on every
stream pair and close only when both directions are finished.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Side(enum.Enum):
    CLIENT = "client"
    TARGET = "target"

    @property
    def other(self) -> Side:
        return Side.TARGET if self is Side.CLIENT else Side.CLIENT


@dataclass(frozen=True)
class ShutdownWrite:
    """Send EOF to ``side`` (``shutdown(SHUT_WR)``): nothing more will be written to it."""

    side: Side


@dataclass(frozen=True)
class CloseAll:
    """Close both sockets and release the relay's buffers."""

    reason: str


Command = ShutdownWrite | CloseAll


class DirectionState:
    """One direction (``source`` -> ``source.other``): a bounded buffer between a read and a write.

    ``window`` is how many bytes the buffer may hold while reads go on. With 0 (a copy buffer,
    reused by the next read) reading stops while the buffer holds anything; with a pipe it is the
    pipe's size, so the source is read while the destination drains (both halves in flight, not
    stop-and-wait). Either way the memory per connection is bounded and a slow writer stops the
    reads from its source (back-pressure). ``stall()`` says a read found no room although the byte
    count had some (a pipe also runs out of slots): reads wait for the next write.
    """

    def __init__(self, source: Side, window: int = 0) -> None:
        self.source = source
        self.window = window
        self.buffered = 0
        self.eof = False
        self.finished = False
        self.stalled = False

    @property
    def destination(self) -> Side:
        return self.source.other

    def want_read(self) -> bool:
        if self.eof or self.finished or self.stalled:
            return False
        return self.buffered == 0 or self.buffered < self.window

    def room(self) -> int:
        """How many bytes a read may add to a windowed buffer."""
        return self.window - self.buffered

    def stall(self) -> None:
        """A read found the buffer full: stop reading until a write makes room."""
        if self.buffered == 0:
            raise ValueError("an empty buffer cannot be full")
        self.stalled = True

    def want_write(self) -> bool:
        return not self.finished and self.buffered > 0

    def read(self, n: int) -> bool:
        """``n`` bytes (> 0) entered the buffer. Returns True when they should be flushed."""
        if n <= 0:
            raise ValueError("use read_eof() for a zero-length read")
        self.buffered += n
        return True

    def wrote(self, n: int) -> bool:
        """``n`` bytes left the buffer. Returns True when this direction is now finished."""
        if n > self.buffered:
            raise ValueError(f"wrote {n} bytes but only {self.buffered} were buffered")
        self.buffered -= n
        if n:
            self.stalled = False
        return self._maybe_finish()

    def read_eof(self) -> bool:
        """The source said EOF. Returns True when this direction is now finished (buffer empty)."""
        self.eof = True
        return self._maybe_finish()

    def _maybe_finish(self) -> bool:
        if self.eof and self.buffered == 0 and not self.finished:
            self.finished = True
            return True
        return False


class RelayState:
    """Both directions of one relay and the decision of when to half-close and when to close."""

    def __init__(self) -> None:
        self.directions = {side: DirectionState(side) for side in Side}
        self.closed = False

    def direction(self, source: Side) -> DirectionState:
        return self.directions[source]

    def finished(self, source: Side) -> list[Command]:
        """The direction from ``source`` has delivered everything, EOF included."""
        if self.closed:
            return []
        if all(d.finished for d in self.directions.values()):
            self.closed = True
            return [ShutdownWrite(source.other), CloseAll("both directions finished")]
        return [ShutdownWrite(source.other)]

    def error(self, side: Side, what: str) -> list[Command]:
        """A read or write on ``side`` failed (reset, broken pipe, ...): no half-measures."""
        if self.closed:
            return []
        self.closed = True
        return [CloseAll(f"{side.value}: {what}")]

    def abort(self, reason: str) -> list[Command]:
        """Stop from outside (device stopped, connection timed out)."""
        if self.closed:
            return []
        self.closed = True
        return [CloseAll(reason)]
