"""Threads that live inside a network namespace, so sockets can be born there.

A socket belongs to the netns it was created in, whatever thread later uses it. Each executor is
one thread that called setns(CLONE_NEWNET) once; the event loop's own thread never switches.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from lxdproxy.netns.namespaces import ns_identity, own_ns_path
from lxdproxy.netns.setns import CLONE_NEWNET, setns

T = TypeVar("T")


class NetnsExecutor:
    """Runs callables inside one network namespace (inline when it is the daemon's own)."""

    def __init__(self, net_path: str) -> None:
        self.net_path = net_path
        self.identity = ns_identity(net_path)
        self._inline = self.identity == ns_identity(own_ns_path("net"))
        self._fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        if not self._inline:
            # Open now so the namespace stays reachable even if its last process exits.
            self._fd = os.open(net_path, os.O_RDONLY | os.O_CLOEXEC)
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netns", initializer=setns,
                initargs=(self._fd, CLONE_NEWNET),
            )

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        return self.call(socket.socket, family, type, proto)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_executors: dict[tuple[int, int], NetnsExecutor] = {}
_keys_by_path: dict[str, tuple[int, int]] = {}  # to release after the namespace's path is gone
_lock = threading.Lock()


def netns_executor(net_path: str | None) -> NetnsExecutor:
    """The shared executor for that network namespace (None = the daemon's own)."""
    path = net_path or own_ns_path("net")
    key = ns_identity(path)
    with _lock:
        ex = _executors.get(key)
        if ex is None:
            ex = _executors[key] = NetnsExecutor(path)
        _keys_by_path[path] = key
        return ex


def release_netns_executor(net_path: str) -> None:
    """Drop the cached executor of a namespace that is going away (frees its thread and fd)."""
    with _lock:
        key = _keys_by_path.pop(net_path, None)
        try:
            key = ns_identity(net_path)
        except (FileNotFoundError, ProcessLookupError):
            pass  # the process is gone: fall back to the identity seen when the executor was made
        if key is None:
            return
        for path in [p for p, k in _keys_by_path.items() if k == key]:
            del _keys_by_path[path]
        ex = _executors.pop(key, None)
    if ex is not None:
        ex.close()
