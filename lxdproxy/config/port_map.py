"""Listen->connect port mapping and port runs, as LXD computes them (spec §2.1, §5.3)."""

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


def contiguous_runs(ports: Iterable[int]) -> list[tuple[int, int]]:
    """(start, size) runs of consecutive ports, in the given order (LXD's portRangesFromSlice).

    Not sorted and not de-duplicated, like LXD: [80,81,82,87,90,91,92,88] ->
    [(80,3), (87,1), (90,3), (88,1)].
    """
    runs: list[tuple[int, int]] = []
    for port in ports:
        if runs and port == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((port, 1))
    return runs
