"""What one proxy device has done since it started: plain integers the relays bump in place.

One ``DeviceCounters`` per device, shared by its listeners and relays (one event loop, so no
locking). ``as_dict()`` is the wire form: a flat dict of numbers that a worker process can send
in a stats message and the collector can sum across processes (``lxdproxy.api.metrics``).

Directions follow HAProxy's frontend counters: *in* is what clients sent towards the target,
*out* is what came back from the target for the clients.
"""

from __future__ import annotations

# Monotonic counters (the collector never lets their totals go backwards).
COUNTER_FIELDS: tuple[str, ...] = (
    "connections_accepted",
    "connect_failures",
    "bytes_in",
    "bytes_out",
    "datagrams_in",
    "datagrams_out",
    "datagrams_dropped",
)
# Point-in-time values, computed from the device's state when a snapshot is taken.
GAUGE_FIELDS: tuple[str, ...] = ("connections_active", "udp_sessions_active")


class DeviceCounters:
    __slots__ = COUNTER_FIELDS

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.connect_failures = 0  # dials to the target that failed (stream or datagram)
        self.bytes_in = 0  # payload bytes from clients, passed on to the target
        self.bytes_out = 0  # payload bytes from the target, passed on to clients
        self.datagrams_in = 0  # datagrams received from clients (udp) or made from a stream
        self.datagrams_out = 0  # datagrams received from the target for a client
        self.datagrams_dropped = 0  # datagrams discarded either way (queues full, send errors)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_FIELDS}
