"""How big each workload is. FULL is the recorded run; QUICK is for iterating; SMOKE is for the test suite."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    rounds: int  # every workload x every peer, interleaved; medians over these
    # iperf3 -n: long enough that /proc CPU ticks (10 ms) are noise: 1 GiB is ~0.3 s of proxy CPU
    bulk_bytes: str
    connrate_seconds: float
    connrate_clients: tuple[int, ...]  # one connection-rate workload per count of client processes
    latency_requests: int  # round trips on one kept-open connection
    udp_seconds: int  # iperf3 -t (whole seconds)
    udp_rate: str  # iperf3 -b: offered load, far above what anything here can carry
    memory_devices: tuple[int, ...]  # lxdproxy: devices in one daemon
    forkproxy_memory_procs: tuple[int, ...]  # forkproxy: processes actually started
    device_add_trials: int
    settle_seconds: float  # pause before reading memory, so freshly made allocations count
    restart_trials: int  # each restart scenario this many times, scenarios interleaved
    restart_before_seconds: float  # traffic before the restart event...
    restart_after_seconds: float  # ...and after it has completed
    scrape_interval: float  # GET /1.0/metrics during the scraped bulk run
    # bulk (and scraped bulk) runs per peer in each round (interleaved over the peers): a single
    # stream's rate and CPU share move 10-30% run to run here, so the bulk medians need more
    # samples than the rest
    bulk_repeats: int = 1


FULL = Sizes("full", 5, "4G", 5.0, (2, 4), 20000, 5, "2G", (1, 100, 1000), (1, 10), 10, 1.0,
             3, 1.0, 2.0, 1.0, bulk_repeats=3)
QUICK = Sizes("quick", 3, "1G", 1.5, (2, 4), 3000, 1, "2G", (1, 100, 1000), (1, 3), 5, 1.0,
              2, 0.5, 1.5, 1.0)
SMOKE = Sizes("smoke", 1, "4M", 0.2, (2,), 50, 1, "20M", (1, 3), (1,), 1, 0.1,
              1, 0.2, 0.5, 0.05)

BY_NAME = {s.name: s for s in (FULL, QUICK, SMOKE)}
