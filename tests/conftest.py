"""Shared fixtures: the network lab (root only)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
