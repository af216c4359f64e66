"""Fixtures shared by the integration tests: the in-process CLI, and the event loops the
data-plane tests run on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from lxdproxy.cli import main
from lxdproxy.workers import WorkerPool

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


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A WorkerPool's state directory: short, because worker control sockets live under it
    (unix paths stop at 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lxpw"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def pools(state_dir: Path) -> AsyncIterator[list[WorkerPool]]:
    """Pools a test opens on ``state_dir``; the last one shuts everything down at the end, and a
    worker a test left behind half way (a pool it replaced, say) is killed."""
    made: list[WorkerPool] = []
    yield made
    if made:
        pids = {pid for pool in made for pid in pool.pids()}
        await made[-1].shutdown()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
