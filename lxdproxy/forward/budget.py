"""File-descriptor budgets for the data plane (issue 12, failure 1).

File descriptors were one pool: 10,500 TCP clients, or UDP from 25,000 source ports, used the
process limit up, and then the API, the store and the instance poller failed too. Here:

- ``raise_nofile_limit`` lifts the soft RLIMIT_NOFILE to the hard limit at start;
- a **reserve** (``TrafficLimits.fd_reserve``) is kept for the API, the store, the namespace
  helpers and the instance watcher: traffic never takes it;
- the rest is the **traffic budget**, shared by every device, charged per connection (the
  client and target sockets plus the two splice pipes a busy relay makes: 6 fds, worst case)
  and per UDP session (its target socket: 1 fd); one device may hold at most
  ``device_share`` of it, so a flood on one device leaves room for the others;
- at a cap a new TCP client is accepted and closed at once (it is not left in the backlog),
  and a new UDP client first evicts the device's least recently active session; refusals
  and evictions are counted and logged once per interval.

One ``TrafficBudget`` per process (the worker's, once the data plane moves to workers); the
``DeviceBudget`` of each running device is what its listeners consult.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrafficLimits:
    """The data plane's limits; ``None`` derives a cap from the file-descriptor limit."""

    fd_reserve: int = 512  # API (its own caps fit in here), store, helpers, watcher, NAT
    fds_per_connection: int = 6  # worst case; set from stream_relay.RelayMode.fds_per_connection
    fds_per_udp_session: int = 1
    device_share: float = 0.5  # of the traffic budget, per device
    max_connections: int | None = None  # in total
    max_connections_per_device: int | None = None
    max_udp_sessions: int | None = None  # in total
    max_udp_sessions_per_device: int | None = None
    log_interval: float = 10.0


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def current_nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class SessionOwner(Protocol):
    """A UDP relay whose least recently active session can be evicted for a new client."""

    def oldest_activity(self) -> float | None: ...

    def evict_oldest(self) -> bool: ...


class _OncePerInterval:
    """Counts events; logs the first one at once and the rest as one line per interval."""

    def __init__(self, what: str, interval: float, clock: Callable[[], float]) -> None:
        self.what = what
        self.interval = interval
        self.clock = clock
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def hit(self, context: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= self.interval:
            log.warning("%s: %s (%d since the last report, %d in all)", context, self.what,
                        self._unlogged, self.total)
            self._logged_at = now
            self._unlogged = 0


class _Holdings:
    """What a budget holds (fds, connections, UDP sessions), and its caps: a cap not set in
    the limits is as many as ``fds`` file descriptors can carry."""

    def __init__(self, limits: TrafficLimits, fds: int, max_connections: int | None,
                 max_udp_sessions: int | None) -> None:
        self.max_connections = max_connections or fds // limits.fds_per_connection
        self.max_udp_sessions = max_udp_sessions or fds // limits.fds_per_udp_session
        self.used_fds = 0
        self.connections = 0
        self.udp_sessions = 0

    def _count(self, fds: int, connections: int, sessions: int) -> None:
        self.used_fds += fds
        self.connections += connections
        self.udp_sessions += sessions


class TrafficBudget(_Holdings):
    def __init__(self, limits: TrafficLimits | None = None, nofile: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits = limits or TrafficLimits()
        self.nofile = nofile if nofile is not None else current_nofile_limit()
        reserve = limits.fd_reserve
        if reserve * 2 > self.nofile:
            # A tiny limit: keep half for the daemon itself rather than refusing everything.
            reserve = self.nofile // 2
            log.warning("RLIMIT_NOFILE is %d: keeping %d file descriptors in reserve instead of "
                        "%d", self.nofile, reserve, limits.fd_reserve)
        self.reserve = reserve
        self.traffic_fds = max(0, self.nofile - reserve)
        self.device_fds = max(1, int(self.traffic_fds * limits.device_share))
        super().__init__(limits, self.traffic_fds, limits.max_connections, limits.max_udp_sessions)
        self.refused_connections = _OncePerInterval(
            "connection refused: the file-descriptor budget is used up", limits.log_interval,
            clock)
        self.refused_sessions = _OncePerInterval(
            "datagram dropped: no UDP session can be made within the budget",
            limits.log_interval, clock)
        self.evicted_sessions = _OncePerInterval(
            "least recently active UDP session evicted for a new client", limits.log_interval,
            clock)

    def device(self, label: str) -> DeviceBudget:
        return DeviceBudget(self, label)

    def stats(self) -> dict[str, int]:
        return {"nofile": self.nofile, "reserve": self.reserve, "traffic_fds": self.traffic_fds,
                "used_fds": self.used_fds, "connections": self.connections,
                "udp_sessions": self.udp_sessions,
                "refused_connections": self.refused_connections.total,
                "refused_udp_sessions": self.refused_sessions.total,
                "evicted_udp_sessions": self.evicted_sessions.total}


class DeviceBudget(_Holdings):
    """One device's share; every admit that returns True must be released exactly once."""

    def __init__(self, total: TrafficBudget, label: str) -> None:
        self.total = total
        self.label = label
        limits = total.limits
        super().__init__(limits, total.device_fds, limits.max_connections_per_device,
                         limits.max_udp_sessions_per_device)
        self._owners: list[SessionOwner] = []

    def _fits(self, fds: int) -> bool:
        t = self.total
        return (t.used_fds + fds <= t.traffic_fds
                and self.used_fds + fds <= t.device_fds)

    # -- stream connections -------------------------------------------------------------------
    def admit_connection(self) -> bool:
        fds = self.total.limits.fds_per_connection
        if (self.connections >= self.max_connections
                or self.total.connections >= self.total.max_connections or not self._fits(fds)):
            self.total.refused_connections.hit(self.label)
            return False
        self._charge(fds, connections=1)
        return True

    def release_connection(self) -> None:
        self._charge(-self.total.limits.fds_per_connection, connections=-1)

    # -- UDP sessions ---------------------------------------------------------------------------
    def register(self, owner: SessionOwner) -> None:
        self._owners.append(owner)

    def unregister(self, owner: SessionOwner) -> None:
        if owner in self._owners:
            self._owners.remove(owner)

    def admit_session(self) -> bool:
        """Room for one more UDP session, evicting this device's least recently active
        session when the device or the total is at its cap; False: drop the datagram."""
        fds = self.total.limits.fds_per_udp_session
        while not self._session_fits(fds):
            if not self._evict_one():
                self.total.refused_sessions.hit(self.label)
                return False
            self.total.evicted_sessions.hit(self.label)
        self._charge(fds, sessions=1)
        return True

    def release_session(self) -> None:
        self._charge(-self.total.limits.fds_per_udp_session, sessions=-1)

    def _session_fits(self, fds: int) -> bool:
        return (self.udp_sessions < self.max_udp_sessions
                and self.total.udp_sessions < self.total.max_udp_sessions and self._fits(fds))

    def _evict_one(self) -> bool:
        candidates = [(at, i) for i, o in enumerate(self._owners)
                      if (at := o.oldest_activity()) is not None]
        if not candidates:
            return False
        _at, index = min(candidates)
        return self._owners[index].evict_oldest()

    def _charge(self, fds: int, *, connections: int = 0, sessions: int = 0) -> None:
        """Count (or, negative, give back) fds and what holds them, here and in the total."""
        self._count(fds, connections, sessions)
        self.total._count(fds, connections, sessions)
