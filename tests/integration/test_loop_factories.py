"""The loop-factory mark really runs a test once on asyncio and once on uvloop (the data-plane
tests that carry it rely on that)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_marked_test_runs_on_each_loop(request: pytest.FixtureRequest) -> None:
    factory = request.node.callspec.params["_asyncio_loop_factory"]
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == (factory is uvloop.new_event_loop)
    assert request.node.callspec.id == ("uvloop" if on_uvloop else "asyncio")


async def test_unmarked_test_runs_on_asyncio_only() -> None:
    assert not isinstance(asyncio.get_running_loop(), uvloop.Loop)
