"""Listen->connect port mapping, as LXD computes it (spec §2.1)."""

from __future__ import annotations

from collections.abc import Iterable


def map_ports(listen_ports: Iterable[int], connect_ports: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Pair each listen port with its connect port, in listen order.

    The only layouts forkproxy accepts: one connect port (every listen port goes to it), or as
    many connect ports as listen ports, paired by position in the expanded lists (so listen
    ``80,81,82`` -> connect ``4321-4323`` maps 80->4321, 81->4322, 82->4323). Anything else is
    forkproxy's ``Invalid port range``. A unix connect has no port: don't call this for it.
    """
    listen = tuple(listen_ports)
    connect = tuple(connect_ports)
    if len(connect) == 1:
        return tuple((port, connect[0]) for port in listen)
    if connect and len(connect) == len(listen):
        return tuple(zip(listen, connect, strict=True))
    raise ValueError("Invalid port range")
