"""Waiting in tests: for a condition to become true, for a process to be gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def process_alive(pid: int) -> bool:
    """False once ``pid`` has exited, zombie included (its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``check`` every 50 ms on the running loop; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
