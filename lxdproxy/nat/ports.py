"""Port-range arithmetic for NAT rules (LXD's lxd/firewall/drivers/drivers_util.go, pure).

LXD collapses consecutive ports into ranges so one nft rule can cover several ports. We keep its
algorithm (so the rule text matches LXD's) but check every range it proposes against the
port-by-port mapping, and fall back to one rule per port wherever LXD would be wrong
(spec §5.3 and §9.14: an aligned target run longer than its listen run makes LXD map ports that
are not in the listen set and then index past the end of the target list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PortRange:
    """``size`` consecutive ports starting at ``start`` (LXD's ``[2]uint64{start, size}``)."""

    start: int
    size: int = 1

    @property
    def end(self) -> int:
        return self.start + self.size - 1

    def text(self, delimiter: str = "-") -> str:
        """``N`` or ``A-B`` as nft (``-``) or iptables (``:``) writes it (LXD's portRangeStr)."""
        if self.size == 1:
            return str(self.start)
        return f"{self.start}{delimiter}{self.end}"

    def ports(self) -> range:
        return range(self.start, self.start + self.size)


def port_ranges_from_slice(ports: Sequence[int]) -> tuple[PortRange, ...]:
    """Split ``ports`` (in order) into runs of consecutive values (LXD's portRangesFromSlice)."""
    runs: list[PortRange] = []
    start_idx = 0
    for i, port in enumerate(ports):
        if i == len(ports) - 1 or ports[i + 1] != port + 1:
            runs.append(PortRange(ports[start_idx], port - ports[start_idx] + 1))
            start_idx = i + 1
    return tuple(runs)


def _is_run(ports: Sequence[int], start: int) -> bool:
    return all(p == start + i for i, p in enumerate(ports))


def optimised_dnat_ranges(
    listen_ports: Sequence[int], target_ports: Sequence[int]
) -> tuple[tuple[PortRange, PortRange], ...]:
    """Listen range -> target range pairs, as LXD's getOptimisedDNATRanges computes them.

    A pair with a multi-port target range means "same ports" (identical ranges); a single-port
    target means every listen port in the range goes to that port. Unlike LXD (which returns a
    Go map, so rule order is random) the result is in listen order, so the rules are stable.
    ``target_ports`` must hold 1 or ``len(listen_ports)`` ports (the caller checks).
    """
    listen_runs = port_ranges_from_slice(listen_ports)
    if len(target_ports) == 1:
        only = PortRange(target_ports[0], 1)
        return tuple((run, only) for run in listen_runs)

    # Keyed by start value like LXD (a later run with the same start wins, as in its Go map).
    run_size_by_start = {run.start: run.size for run in port_ranges_from_slice(target_ports)}

    pairs: list[tuple[PortRange, PortRange]] = []
    done = 0  # index into both port lists
    for run in listen_runs:
        run_end = done + run.size
        current = target_ports[done]
        target_size = run_size_by_start.get(current)
        if target_size is not None and run.start == current:
            size = min(target_size, run.size)
            # LXD maps the whole target run even when it is longer than the listen run (bug,
            # §9.14) and trusts the start-value lookup even when the run at the cursor is a
            # different one (duplicate ports). Take the range only when it is exactly the
            # port-by-port mapping; otherwise the loop below maps each port on its own.
            if target_size <= run.size and _is_run(target_ports[done : done + size], current):
                pairs.append((PortRange(run.start, size), PortRange(current, size)))
                done += size
        # Whatever is left of this listen run is mapped port by port.
        while done < run_end:
            pairs.append((PortRange(listen_ports[done], 1), PortRange(target_ports[done], 1)))
            done += 1
    return tuple(pairs)
