"""RateLimitedLog: a noisy peer cannot fill the disk through the datagram relays' warnings."""

from __future__ import annotations

import logging

from lxdproxy.forward.rate_limited_log import RateLimitedLog


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppressed_then_summary(caplog):
    clock = _Clock()
    rl = RateLimitedLog(logging.getLogger("t.dg"), "udp relay x", interval=10, burst=3,
                        clock=clock)
    with caplog.at_level(logging.INFO, logger="t.dg"):
        for i in range(100):
            rl.warning("drop %d", i)
        assert [r.getMessage() for r in caplog.records] == [
            "udp relay x: drop 0", "udp relay x: drop 1", "udp relay x: drop 2"]
        caplog.clear()
        clock.now += 10
        rl.info("later")
        assert [r.getMessage() for r in caplog.records] == [
            "udp relay x: 97 similar messages suppressed", "udp relay x: later"]


def test_first_message_at_clock_zero_is_logged(caplog):
    rl = RateLimitedLog(logging.getLogger("t.dg0"), "c", clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="t.dg0"):
        rl.warning("first")
    assert [r.getMessage() for r in caplog.records] == ["c: first"]


def test_disabled_level_costs_no_budget(caplog):
    clock = _Clock()
    rl = RateLimitedLog(logging.getLogger("t.dg2"), "c", burst=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.dg2"):
        rl.info("not shown")  # INFO is off: must not use up the burst
        rl.warning("shown")
    assert [r.getMessage() for r in caplog.records] == ["c: shown"]
