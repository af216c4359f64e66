"""Load generators that run in the lab host netns: ``python -m benchmarks.clients <cmd> ...``.

Each prints one JSON object on stdout. Every loop is bounded in count and in time.
- ``connrate HOST PORT --start-at T --seconds S``: new connection, 64-byte request, 64-byte reply,
  close; repeated until ``T + S`` (CLOCK_MONOTONIC is system-wide, so several client processes
  started by the driver begin together at ``T``).
- ``latency HOST PORT --requests N``: one kept-open connection (TCP_NODELAY), N sequential 64-byte
  request/response round trips; reports p50/p99/mean in microseconds.
- ``probe HOST PORT --timeout S``: prints ``READY``, waits for a line on stdin, then tries to get one
  byte echoed back through HOST:PORT as often as it can; reports the CLOCK_MONOTONIC time of the first
  echoed byte (for device-add latency: the driver notes the time just before its REST call).
- ``restart HOST PORT --interval I --max-seconds S``: two threads, each every I seconds: one opens a
  new connection (connect, 64-byte request, 64-byte reply, close), the other echoes 64 bytes on one
  held connection (re-opened after a break). Prints ``READY`` once both have succeeded once, runs
  until a line arrives on stdin (or S passes), then reports refused/failed connects, the longest gap
  between successful connects and between held echoes, and the held connection's breaks.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import threading
import time

PAYLOAD = b"x" * 64
MAX_ERRORS = 1000  # a broken peer fails fast instead of spinning for the whole window


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def connrate(host: str, port: int, start_at: float, seconds: float) -> dict:
    while time.monotonic() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
    end = start_at + seconds
    done = errors = 0
    last_error = ""
    cpu0 = time.process_time()
    now = time.monotonic()
    while now < end and errors < MAX_ERRORS:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(PAYLOAD)
                _recv_exact(s, len(PAYLOAD))
            done += 1
        except OSError as exc:
            errors += 1
            last_error = str(exc)
        now = time.monotonic()
    return {"connections": done, "errors": errors, "seconds": now - start_at, "last_error": last_error,
            "cpu_s": time.process_time() - cpu0}


def latency(host: str, port: int, requests: int, warmup: int) -> dict:
    samples: list[int] = []
    with socket.create_connection((host, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + requests):
            t0 = time.perf_counter_ns()
            s.sendall(PAYLOAD)
            _recv_exact(s, len(PAYLOAD))
            if i >= warmup:
                samples.append(time.perf_counter_ns() - t0)
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000.0

    return {
        "requests": len(samples),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": sum(samples) / len(samples) / 1000.0,
    }


def probe(host: str, port: int, timeout: float, interval: float) -> dict:
    print("READY", flush=True)
    if not sys.stdin.readline():
        return {"error": "driver went away"}
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error = ""
    while time.monotonic() < deadline:
        attempts += 1
        try:
            # a short connect timeout: a SYN that races the listener's creation is retried by
            # us at once rather than by the kernel after a second
            with socket.create_connection((host, port), timeout=0.25) as s:
                s.settimeout(5)
                s.sendall(b"!")
                if s.recv(1) == b"!":
                    return {"t_first_byte": time.monotonic(), "attempts": attempts}
                last_error = "connected but nothing came back"
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, None):
                last_error = str(exc)
        time.sleep(interval)
    return {"error": f"no echoed byte within {timeout}s ({attempts} attempts) {last_error}".strip()}


def _exchange(sock: socket.socket) -> None:
    sock.sendall(PAYLOAD)
    if _recv_exact(sock, len(PAYLOAD)) != PAYLOAD:
        raise ConnectionError("the echo differs from what was sent")


class _Every:
    """Run ``once`` every ``interval`` s until ``stop``; count outcomes and the longest gap between
    successes (the gap starts at the first success, so start-up is not counted)."""

    def __init__(self, once: object, interval: float, stop: threading.Event) -> None:
        self.once, self.interval, self.stop = once, interval, stop
        self.ok = self.refused = self.failed = 0
        self.longest_gap_ms = 0.0
        self.errors: list[str] = []
        self.first_ok = threading.Event()

    def run(self) -> None:
        last_ok: float | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.once()  # type: ignore[operator]
            except ConnectionRefusedError:
                self.refused += 1
            except OSError as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
            else:
                now = time.monotonic()
                if last_ok is not None:
                    self.longest_gap_ms = max(self.longest_gap_ms, (now - last_ok) * 1000)
                last_ok = now
                self.ok += 1
                self.first_ok.set()
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def restart(host: str, port: int, interval: float, max_seconds: float) -> dict:
    stop = threading.Event()

    def connect_once() -> None:
        with socket.create_connection((host, port), timeout=3) as s:
            _exchange(s)

    held: list[socket.socket] = []
    breaks = 0

    def held_once() -> None:
        nonlocal breaks
        if not held:
            held.append(socket.create_connection((host, port), timeout=3))
        try:
            _exchange(held[0])
        except OSError:
            breaks += 1
            held.pop().close()
            raise

    loops = [_Every(connect_once, interval, stop), _Every(held_once, interval, stop)]
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
    for t in threads:
        t.start()
    if not all(loop.first_ok.wait(10) for loop in loops):
        stop.set()
        return {"error": f"no successful exchange within 10 s: {loops[0].errors + loops[1].errors}"}
    print("READY", flush=True)
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    stop.wait(max_seconds)
    stop.set()
    for t in threads:
        t.join(10)
    conn, echo = loops
    return {"connects": conn.ok + conn.refused + conn.failed, "ok": conn.ok, "refused": conn.refused,
            "failed": conn.failed, "longest_gap_ms": conn.longest_gap_ms,
            "held_echoes": echo.ok, "held_breaks": breaks, "held_reopen_failures": echo.refused
            + echo.failed - breaks, "held_longest_gap_ms": echo.longest_gap_ms,
            "errors": conn.errors + echo.errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.clients")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("connrate")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--start-at", type=float, required=True)
    c.add_argument("--seconds", type=float, required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("host")
    lat.add_argument("port", type=int)
    lat.add_argument("--requests", type=int, required=True)
    lat.add_argument("--warmup", type=int, default=100)
    pr = sub.add_parser("probe")
    pr.add_argument("host")
    pr.add_argument("port", type=int)
    pr.add_argument("--timeout", type=float, default=5.0)
    pr.add_argument("--interval", type=float, default=0.0005)
    rs = sub.add_parser("restart")
    rs.add_argument("host")
    rs.add_argument("port", type=int)
    rs.add_argument("--interval", type=float, default=0.02)
    rs.add_argument("--max-seconds", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.cmd == "restart":
        out = restart(args.host, args.port, args.interval, args.max_seconds)
    elif args.cmd == "connrate":
        out = connrate(args.host, args.port, args.start_at, args.seconds)
    elif args.cmd == "latency":
        out = latency(args.host, args.port, args.requests, args.warmup)
    else:
        out = probe(args.host, args.port, args.timeout, args.interval)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
