"""The data plane's fd budget: a reserve traffic never takes, per-device shares, UDP eviction
of the least recently active session, refusals counted and logged once per interval."""

from __future__ import annotations

import logging

import pytest

from lxdproxy.forward.budget import TrafficBudget, TrafficLimits
from lxdproxy.forward.stream_relay import RelayMode


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Relay:
    """Stands in for a UdpListenerRelay's session table: (last activity, session) pairs."""

    def __init__(self, budget, times: list[float]) -> None:
        self.budget = budget
        self.times = sorted(times)
        for _ in times:
            assert budget.admit_session()

    def oldest_activity(self) -> float | None:
        return self.times[0] if self.times else None

    def evict_oldest(self) -> bool:
        self.times.pop(0)
        self.budget.release_session()
        return True


def test_reserve_and_device_share() -> None:
    budget = TrafficBudget(TrafficLimits(fd_reserve=100), nofile=1300)
    assert (budget.reserve, budget.traffic_fds, budget.device_fds) == (100, 1200, 600)
    a, b = budget.device("a"), budget.device("b")
    admitted_a = sum(a.admit_connection() for _ in range(1000))
    assert admitted_a == 100  # 600 fds / 6 per connection: the device's half
    admitted_b = sum(b.admit_connection() for _ in range(1000))
    assert admitted_b == 100  # the other device still gets its share
    assert budget.used_fds == 1200 <= budget.nofile - budget.reserve
    assert budget.refused_connections.total == 1800
    for _ in range(100):
        a.release_connection()
        b.release_connection()
    assert (budget.used_fds, budget.connections) == (0, 0)


def test_tiny_limit_keeps_half_in_reserve(caplog: pytest.LogCaptureFixture) -> None:
    budget = TrafficBudget(TrafficLimits(fd_reserve=512), nofile=256)
    assert (budget.reserve, budget.traffic_fds) == (128, 128)
    assert "keeping 128 file descriptors in reserve" in caplog.text


def test_explicit_caps() -> None:
    limits = TrafficLimits(fd_reserve=0, max_connections=5, max_connections_per_device=3,
                           max_udp_sessions_per_device=2)
    budget = TrafficBudget(limits, nofile=100_000)
    a, b = budget.device("a"), budget.device("b")
    assert [a.admit_connection() for _ in range(4)] == [True, True, True, False]
    assert [b.admit_connection() for _ in range(3)] == [True, True, False]  # total 5
    Relay(a, [1.0, 2.0])
    assert a.udp_sessions == 2


def test_udp_at_cap_evicts_the_devices_least_recently_active_session() -> None:
    budget = TrafficBudget(TrafficLimits(fd_reserve=0, max_udp_sessions_per_device=4),
                           nofile=100_000)
    dev = budget.device("d")
    port1 = Relay(dev, [5.0, 9.0])
    port2 = Relay(dev, [3.0, 7.0])
    dev.register(port1)
    dev.register(port2)
    assert dev.admit_session()  # evicts 3.0 (port 2)
    assert (port1.times, port2.times) == ([5.0, 9.0], [7.0])
    assert dev.admit_session()  # evicts 5.0 (port 1)
    assert (port1.times, port2.times) == ([9.0], [7.0])
    assert dev.udp_sessions == 4
    assert budget.evicted_sessions.total == 2


def test_udp_refused_when_the_device_has_nothing_to_evict() -> None:
    budget = TrafficBudget(TrafficLimits(fd_reserve=0, max_udp_sessions=2), nofile=100_000)
    flood, quiet = budget.device("flood"), budget.device("quiet")
    flood.register(Relay(flood, [1.0, 2.0]))
    assert not quiet.admit_session()
    assert budget.refused_sessions.total == 1
    assert flood.admit_session()  # the flooding device only displaces its own sessions


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    budget = TrafficBudget(TrafficLimits(fd_reserve=0, max_connections=1, log_interval=10),
                           nofile=100, clock=clock)
    dev = budget.device("proxy c1/web")
    assert dev.admit_connection()
    with caplog.at_level(logging.WARNING, "lxdproxy.forward.budget"):
        for _ in range(1000):
            dev.admit_connection()
        clock.now = 10.0
        dev.admit_connection()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "proxy c1/web: connection refused: the file-descriptor budget is used up (1 since the "
        "last report, 1 in all)",
        "proxy c1/web: connection refused: the file-descriptor budget is used up (1000 since "
        "the last report, 1001 in all)",
    ]


@pytest.mark.parametrize(("mode", "admitted"), [(RelayMode.COPY, 300), (RelayMode.SPLICE, 100)])
def test_a_relay_without_pipes_costs_a_third_of_the_fds(mode: RelayMode, admitted: int) -> None:
    # What worker_main and the in-process daemon charge per connection: client + target, plus
    # one pipe a direction when splicing.
    limits = TrafficLimits(fd_reserve=100, fds_per_connection=mode.fds_per_connection)
    device = TrafficBudget(limits, nofile=1300).device("a")
    assert sum(device.admit_connection() for _ in range(1000)) == admitted
