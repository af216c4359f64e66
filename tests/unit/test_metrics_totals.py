"""CounterTotals: device counters summed over sources (workers) never go backwards."""

from __future__ import annotations

from lxdproxy.api.metrics import CounterTotals
from lxdproxy.forward.counters import COUNTER_FIELDS

WEB = ("c1", "web")


def snap(accepted: int, active: int = 0) -> dict[str, int]:
    return {"connections_accepted": accepted, "bytes_in": 10 * accepted,
            "connections_active": active}


def test_sums_sources_and_gauges() -> None:
    totals = CounterTotals().update({"w1": {WEB: snap(3, active=1)}, "w2": {WEB: snap(4, 2)}})
    assert totals[WEB]["connections_accepted"] == 7
    assert totals[WEB]["bytes_in"] == 70
    assert totals[WEB]["connections_active"] == 3
    assert set(COUNTER_FIELDS) <= set(totals[WEB])


def test_a_replaced_worker_keeps_what_it_counted() -> None:
    t = CounterTotals()
    t.update({"w1": {WEB: snap(3)}, "w2": {WEB: snap(4)}})
    # w1 died and w3 took over; w3 starts from zero.
    totals = t.update({"w2": {WEB: snap(5)}, "w3": {WEB: snap(1, active=1)}})
    assert totals[WEB]["connections_accepted"] == 3 + 5 + 1
    assert totals[WEB]["connections_active"] == 1  # gauges are not floored
    totals = t.update({"w2": {WEB: snap(6)}, "w3": {WEB: snap(2)}})
    assert totals[WEB]["connections_accepted"] == 3 + 6 + 2


def test_a_count_that_drops_in_a_source_is_a_restart_there() -> None:
    t = CounterTotals()
    t.update({"w1": {WEB: snap(10)}})
    assert t.update({"w1": {WEB: snap(2)}})[WEB]["connections_accepted"] == 12
    assert t.update({"w1": {WEB: snap(3)}})[WEB]["connections_accepted"] == 13


def test_totals_never_decrease_over_any_sequence() -> None:
    t = CounterTotals()
    seen = 0.0
    for sources in ({"a": {WEB: snap(5)}}, {"b": {WEB: snap(1)}}, {"a": {WEB: snap(2)}},
                    {"a": {WEB: snap(1)}, "b": {WEB: snap(9)}}, {"c": {WEB: snap(0)}}):
        now = t.update(sources)[WEB]["connections_accepted"]
        assert now >= seen
        seen = now


def test_a_device_gone_everywhere_loses_its_series() -> None:
    t = CounterTotals()
    t.update({"w1": {WEB: snap(3), ("c1", "dns"): snap(1)}})
    t.update({"w2": {WEB: snap(1)}})  # w1 replaced; dns runs nowhere now
    totals = t.update({"w2": {WEB: snap(1)}})
    assert ("c1", "dns") not in totals
    assert totals[WEB]["connections_accepted"] == 4


def test_nat_counters_are_floored_when_the_rules_are_re_applied() -> None:
    t = CounterTotals()
    t.update({"nat": {WEB: {"nat_packets": 4, "nat_bytes": 240}}})
    # repair or a restart re-created the chains: nft's counters start at 0 again
    totals = t.update({"nat": {WEB: {"nat_packets": 1, "nat_bytes": 60}}})
    assert (totals[WEB]["nat_packets"], totals[WEB]["nat_bytes"]) == (5, 300)
