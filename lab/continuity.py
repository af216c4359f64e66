"""Traffic that watches for an outage: a held connection that keeps echoing, and a client that
connects every few milliseconds and counts what failed and the longest gap between successes.

Both run in plain threads (blocking sockets), so the code under test may share the caller's
event loop; both stop by themselves (bounded duration or count).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class HeldConnection:
    """One connection through the proxy, to an echo server, that a test pings now and then."""

    def __init__(self, place: Any, address: tuple[str, int], family: int = socket.AF_INET,
                 timeout: float = 5.0, tag: bytes = b"") -> None:
        self.tag = tag  # what the echo server puts before each reply (lab.echo --tag)
        self.sock = place.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._n = 0

    def echo(self, payload: bytes | None = None) -> bool:
        """Send and expect the same bytes back; False if the connection is gone."""
        self._n += 1
        data = payload or f"ping {self._n}\n".encode()
        want = self.tag + data
        try:
            self.sock.sendall(data)
            got = b""
            while len(got) < len(want):
                chunk = self.sock.recv(65536)
                if not chunk:
                    return False
                got += chunk
        except OSError:
            return False
        return got == want

    def close(self) -> None:
        self.sock.close()


@dataclass
class ConnectLoopResult:
    attempts: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0  # connected but no echo, reset, timeout
    longest_gap_ms: float = 0.0  # between two successful connections
    errors: list[str] = field(default_factory=list)


class ConnectLoop:
    """Connect, send, read the echo, close: every ``interval`` seconds, in a thread."""

    def __init__(self, place: Any, address: tuple[str, int], *, interval: float = 0.02,
                 duration: float = 30.0, family: int = socket.AF_INET,
                 timeout: float = 3.0) -> None:
        self.place, self.address, self.family = place, address, family
        self.interval, self.duration, self.timeout = interval, duration, timeout
        self.result = ConnectLoopResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> ConnectLoopResult:
        self._stop.set()
        self._thread.join(self.duration + self.timeout + 5)
        return self.result

    def _once(self, n: int) -> str | None:
        sock = self.place.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        payload = f"loop {n}\n".encode()
        try:
            with sock:
                sock.connect(self.address)
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"failed: {exc!r}"
        return None if got == payload else f"failed: got {got!r}"

    def _run(self) -> None:
        r = self.result
        end = time.monotonic() + self.duration
        last_ok = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            r.attempts += 1
            error = self._once(r.attempts)
            now = time.monotonic()
            if error is None:
                r.ok += 1
                r.longest_gap_ms = max(r.longest_gap_ms, (now - last_ok) * 1000)
                last_ok = now
            else:
                if error == "refused":
                    r.refused += 1
                else:
                    r.failed += 1
                if len(r.errors) < 10:
                    r.errors.append(error)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
