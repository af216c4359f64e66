"""Fixtures shared by the integration tests: the in-process CLI, and the event loops the
data-plane tests run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

from lxdproxy.cli import main

# uvloop is the daemon's loop when installed; tests marked
# ``@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])`` run once on each, as loop
# factories rather than a global policy: the lab's pyroute2 calls need plain asyncio loops in
# their own threads.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    marker = item.get_closest_marker("asyncio")
    if marker is not None and "loop_factories" in marker.kwargs:
        return LOOP_FACTORIES
    # Every other test keeps a single asyncio loop (and its test id unchanged).
    return {"asyncio": LOOP_FACTORIES["asyncio"]}


@pytest.fixture
def lx(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in this process; (exit code, stdout, stderr), never a traceback."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, err

    return run
