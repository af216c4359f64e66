"""Shared fixtures: the network lab (root only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab builds network namespaces (CI runs as root)")


@pytest.fixture
def lab() -> Iterator[Lab]:  # noqa: F821
    _need_root()
    from lab import Lab

    with Lab() as built:
        yield built


@pytest.fixture
def running_daemon(lab: Lab, tmp_path: Path) -> Iterator[RunningDaemon]:  # noqa: F821
    """The real ``lxdproxy serve`` in lab.host (state in tmp_path/state); shut down after."""
    from lab.daemon import RunningDaemon

    d = RunningDaemon(lab, tmp_path / "state").start()
    yield d
    if d.proc and d.proc.poll() is None:
        assert d.stop() == 0
