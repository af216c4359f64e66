"""UDP session bookkeeping for udp->udp relays: which client owns which upstream socket.

Pure data structure with an injected clock; the data plane owns the sockets (a session's
``value`` is whatever the caller stores, typically the connected upstream socket and its task)
and must close what ``expire``/eviction/``remove`` hand back.

Deliberate differences from LXD's forkproxy (spec §4.4):
- the key is (listener id, client address), not the client address alone, so one client
  sending to two listen ports of a device gets two sessions (LXD shares the first one: a bug);
- the table is bounded (``max_sessions``): when full, the least recently used session is
  evicted. LXD's table grows without limit, one fd per client, until the 30-minute timers fire.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from lxdproxy.forward.limits import UDP_IDLE_TIMEOUT

DEFAULT_IDLE_TIMEOUT = UDP_IDLE_TIMEOUT
DEFAULT_MAX_SESSIONS = 4096

V = TypeVar("V")
SessionKey = tuple[Hashable, Hashable]  # (listener id, client address)


@dataclass(eq=False)
class UdpSession(Generic[V]):
    """One client's session. Mutable on purpose: ``last_seen`` moves with every datagram, and
    sessions are compared by identity (the reverse path holds on to its own session)."""

    key: SessionKey
    value: V
    created: float
    last_seen: float

    @property
    def listener_id(self) -> Hashable:
        return self.key[0]

    @property
    def client(self) -> Hashable:
        return self.key[1]


class SessionLookup(NamedTuple, Generic[V]):
    session: UdpSession[V]
    created: bool
    evicted: tuple[UdpSession[V], ...]  # the caller must release these


class UdpSessionTable(Generic[V]):
    """Sessions in least-recently-used order.

    ``clock`` must be monotonic (``time.monotonic`` or a test's fake): expiry walks the LRU
    order from the oldest and stops at the first live session.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[SessionKey, UdpSession[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[UdpSession[V]]:
        """Oldest (least recently used) first."""
        return iter(list(self._sessions.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._sessions

    def get(self, listener_id: Hashable, client: Hashable) -> UdpSession[V] | None:
        """Look up without touching."""
        return self._sessions.get((listener_id, client))

    def touch(self, session: UdpSession[V]) -> bool:
        """A datagram went either way: reset its idle timer. False if it is no longer in the
        table (expired or evicted meanwhile: LXD's reverse path then says "Connection expired")."""
        if self._sessions.get(session.key) is not session:
            return False
        session.last_seen = max(session.last_seen, self._clock())
        self._sessions.move_to_end(session.key)
        return True

    def add(self, listener_id: Hashable, client: Hashable, value: V) -> SessionLookup[V]:
        """Insert a new session (replacing none: raises KeyError if the key is present)."""
        key = (listener_id, client)
        if key in self._sessions:
            raise KeyError(f"session {key!r} already exists")
        evicted: list[UdpSession[V]] = []
        while len(self._sessions) >= self.max_sessions:
            evicted.append(self._sessions.popitem(last=False)[1])
        now = self._clock()
        session = UdpSession(key=key, value=value, created=now, last_seen=now)
        self._sessions[key] = session
        return SessionLookup(session, True, tuple(evicted))

    def remove(self, session: UdpSession[V]) -> bool:
        """Drop a session (its relay failed). False if it was already gone."""
        if self._sessions.get(session.key) is not session:
            return False
        del self._sessions[session.key]
        return True

    def expire(self, now: float | None = None) -> list[UdpSession[V]]:
        """Remove and return every session idle for ``idle_timeout`` or longer, oldest first."""
        if now is None:
            now = self._clock()
        expired: list[UdpSession[V]] = []
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_seen < self.idle_timeout:
                break
            expired.append(self._sessions.popitem(last=False)[1])
        return expired

    def oldest(self) -> UdpSession[V] | None:
        """The least recently active session (the next to expire or be evicted)."""
        return next(iter(self._sessions.values()), None)

    def next_expiry(self) -> float | None:
        """When the oldest session will expire (clock time), or None if the table is empty: the
        data plane sleeps until then instead of polling."""
        for session in self._sessions.values():
            return session.last_seen + self.idle_timeout
        return None

    def clear(self) -> list[UdpSession[V]]:
        """Remove and return everything (listener shutdown)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions
