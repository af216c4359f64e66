"""Port mapping (spec §2.1) and LXD's portRangesFromSlice (spec §5.3, nat/ports.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.config.port_map import map_ports
from lxdproxy.nat.ports import port_ranges_from_slice


def contiguous_runs(ports: list[int]) -> list[tuple[int, int]]:
    return [(r.start, r.size) for r in port_ranges_from_slice(ports)]


@pytest.mark.parametrize(
    ("listen", "connect", "expected"),
    [
        ([80], [8080], ((80, 8080),)),
        ([80, 81, 82], [4321], ((80, 4321), (81, 4321), (82, 4321))),
        ([80, 81, 82], [4321, 4322, 4323], ((80, 4321), (81, 4322), (82, 4323))),
        # By position in the expanded lists, not by sorting.
        ([1234, 80, 90], [3, 2, 1], ((1234, 3), (80, 2), (90, 1))),
        ([80, 80], [1, 2], ((80, 1), (80, 2))),
        ([], [22], ()),  # unix listen -> tcp connect: no listen ports
        ((p for p in (10, 11)), iter([20, 21]), ((10, 20), (11, 21))),
    ],
)
def test_map_ports(listen, connect, expected) -> None:
    assert map_ports(listen, connect) == expected


@pytest.mark.parametrize(
    ("listen", "connect"),
    [([80], [1, 2]), ([80, 81, 82], [1, 2]), ([80, 81], [1, 2, 3]), ([80], []), ([], [])],
)
def test_map_ports_invalid_port_range(listen, connect) -> None:
    with pytest.raises(ValueError, match="^Invalid port range$"):
        map_ports(listen, connect)


def test_contiguous_runs_lxd_vector() -> None:
    assert contiguous_runs([80, 81, 82, 87, 90, 91, 92, 88]) == [(80, 3), (87, 1), (90, 3), (88, 1)]


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([], []),
        ([80], [(80, 1)]),
        ([80, 81, 82, 83], [(80, 4)]),
        ([83, 82, 81], [(83, 1), (82, 1), (81, 1)]),  # descending is not a run
        ([80, 80, 81], [(80, 1), (80, 2)]),  # duplicates are kept, like LXD
        ([65534, 65535], [(65534, 2)]),
    ],
)
def test_contiguous_runs(ports, expected) -> None:
    assert contiguous_runs(ports) == expected


@given(st.lists(st.integers(0, 65535), max_size=50))
def test_contiguous_runs_expand_back(ports) -> None:
    runs = contiguous_runs(ports)
    assert [start + i for start, size in runs for i in range(size)] == ports
    # Adjacent runs never continue each other (maximal runs).
    assert all(a[0] + a[1] != b[0] for a, b in zip(runs, runs[1:], strict=False))
