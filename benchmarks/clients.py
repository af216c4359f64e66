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
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
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
    return {"connections": done, "errors": errors, "seconds": now - start_at, "last_error": last_error}


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
    args = p.parse_args(argv)
    if args.cmd == "connrate":
        out = connrate(args.host, args.port, args.start_at, args.seconds)
    elif args.cmd == "latency":
        out = latency(args.host, args.port, args.requests, args.warmup)
    else:
        out = probe(args.host, args.port, args.timeout, args.interval)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
