"""LXD's port-range optimisation (spec §5.3) with its over-long-range crash fixed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.nat.ports import PortRange, optimised_dnat_ranges, port_ranges_from_slice


def R(start: int, size: int = 1) -> PortRange:  # noqa: N802 - reads like LXD's [2]uint64
    return PortRange(start, size)


def test_port_ranges_from_slice_lxd_vectors() -> None:
    assert port_ranges_from_slice([80]) == (R(80),)
    assert port_ranges_from_slice([80, 81, 82, 83]) == (R(80, 4),)
    assert port_ranges_from_slice([80, 90, 100]) == (R(80), R(90), R(100))
    assert port_ranges_from_slice([80, 81, 82, 90, 91, 92, 100, 101, 102]) == (
        R(80, 3),
        R(90, 3),
        R(100, 3),
    )
    assert port_ranges_from_slice([80, 81, 82, 87, 90, 91, 92, 88, 100, 101, 102, 89]) == (
        R(80, 3),
        R(87),
        R(90, 3),
        R(88),
        R(100, 3),
        R(89),
    )
    assert port_ranges_from_slice([]) == ()


def test_port_range_text() -> None:
    assert R(80).text() == "80"
    assert R(80, 3).text() == "80-82"
    assert R(80, 3).text(":") == "80:82"


def test_dnat_ranges_lxd_unit_vectors() -> None:
    assert optimised_dnat_ranges([80], [80]) == ((R(80), R(80)),)
    assert optimised_dnat_ranges([80, 81, 82, 83], [80, 81, 82, 83]) == ((R(80, 4), R(80, 4)),)
    assert optimised_dnat_ranges([80], [8080]) == ((R(80), R(8080)),)
    assert optimised_dnat_ranges([80, 81, 82, 83], [90, 91, 92, 93]) == (
        (R(80), R(90)),
        (R(81), R(91)),
        (R(82), R(92)),
        (R(83), R(93)),
    )
    listen = [80, 81, 82, 83, 200, 201, 202, 203, 100, 101]
    target = [80, 81, 110, 120, 200, 201, 202, 203, 100, 101]
    assert optimised_dnat_ranges(listen, target) == (
        (R(80, 2), R(80, 2)),
        (R(82), R(110)),
        (R(83), R(120)),
        (R(200, 4), R(200, 4)),
        (R(100, 2), R(100, 2)),
    )


def test_dnat_ranges_single_target_port() -> None:
    assert optimised_dnat_ranges([7600, 7601, 9000], [8600]) == (
        (R(7600, 2), R(8600)),
        (R(9000), R(8600)),
    )


def test_over_long_aligned_target_run_falls_back_per_port() -> None:
    # LXD maps (80,3)->(80,3) here (port 82 is not a listen port) and then panics with an index
    # out of range on the next listen run (spec §9.14).
    assert optimised_dnat_ranges([80, 81, 85], [80, 81, 82]) == (
        (R(80), R(80)),
        (R(81), R(81)),
        (R(85), R(82)),
    )


def test_duplicate_target_start_does_not_borrow_another_run() -> None:
    # Target runs (5,1),(9,1),(5,2): LXD looks the size up by start value (5 -> 2, the later run)
    # and would send listen 6 to 6 instead of 9.
    assert optimised_dnat_ranges([5, 6, 100, 101], [5, 9, 5, 6]) == (
        (R(5), R(5)),
        (R(6), R(9)),
        (R(100), R(5)),
        (R(101), R(6)),
    )


def _expand(pairs: tuple[tuple[PortRange, PortRange], ...]) -> list[tuple[int, int]]:
    out = []
    for listen, target in pairs:
        for i, port in enumerate(listen.ports()):
            out.append((port, target.start if target.size == 1 else target.start + i))
            assert target.size in (1, listen.size)
    return out


ports = st.integers(min_value=1, max_value=40)


@given(st.lists(ports, min_size=1, max_size=12), st.data())
def test_ranges_always_equal_the_per_port_mapping(listen: list[int], data: st.DataObject) -> None:
    n_target = data.draw(st.sampled_from([1, len(listen)]))
    target = data.draw(st.lists(ports, min_size=n_target, max_size=n_target))
    expected = [(p, target[0] if n_target == 1 else target[i]) for i, p in enumerate(listen)]
    assert _expand(optimised_dnat_ranges(listen, target)) == expected
