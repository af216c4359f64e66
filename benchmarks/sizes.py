"""How big each workload is. FULL is the recorded run; QUICK is for iterating; SMOKE is for the test suite."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    rounds: int  # every workload x every peer, interleaved; medians over these
    bulk_bytes: str  # iperf3 -n
    connrate_seconds: float
    connrate_clients: int  # client processes
    latency_requests: int  # round trips on one kept-open connection
    udp_seconds: int  # iperf3 -t (whole seconds)
    udp_rate: str  # iperf3 -b: offered load, far above what anything here can carry
    memory_devices: tuple[int, ...]  # lxdproxy: devices in one daemon
    forkproxy_memory_procs: tuple[int, ...]  # forkproxy: processes actually started
    device_add_trials: int
    settle_seconds: float  # pause before reading memory, so freshly made allocations count


FULL = Sizes("full", 5, "2G", 5.0, 4, 20000, 5, "2G", (1, 100, 1000), (1, 10), 10, 1.0)
QUICK = Sizes("quick", 3, "256M", 1.5, 4, 3000, 1, "2G", (1, 100, 1000), (1, 3), 5, 1.0)
SMOKE = Sizes("smoke", 1, "4M", 0.2, 2, 50, 1, "20M", (1, 3), (1,), 1, 0.1)

BY_NAME = {s.name: s for s in (FULL, QUICK, SMOKE)}
