"""Both-ways bulk transfer for lab tests: ``python lab/bulk.py listen|connect PROTO ADDR [PORT] --bytes N``.

PROTO is tcp or unix (ADDR a path then, ``@name`` for abstract). Each end sends N bytes of
``pattern`` while it reads the peer's bytes to EOF, then half-closes its sending side; when both
are done it prints one JSON line: ``{"sent": N, "received": M, "sha1": "<hex of what it read>"}``.
``listen`` serves one connection and prints READY once it listens.

The pattern is 1 MiB blocks, each its 8-byte index followed by the same pseudo-random bytes: a
block lost, repeated or delivered out of order changes the hash, and making the data costs no more
than writing an index. Standard library only (lab scripts run with Debian's python3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import struct
import sys
import threading
from collections.abc import Iterator

BLOCK = 1 << 20


def pattern(total: int) -> Iterator[memoryview]:
    """The ``total`` bytes an end sends, as views of one reused block."""
    block = bytearray(random.Random(10).randbytes(BLOCK))
    view = memoryview(block)
    sent, index = 0, 0
    while sent < total:
        struct.pack_into("!Q", block, 0, index)
        n = min(BLOCK, total - sent)
        yield view[:n]
        sent += n
        index += 1


def expected_sha1(total: int) -> str:
    h = hashlib.sha1()
    for chunk in pattern(total):
        h.update(chunk)
    return h.hexdigest()


def _send(sock: socket.socket, total: int, errors: list[BaseException]) -> None:
    try:
        for chunk in pattern(total):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        errors.append(exc)


def transfer(sock: socket.socket, total: int) -> dict[str, object]:
    """Send ``total`` bytes in a thread while this one hashes what arrives, up to EOF."""
    errors: list[BaseException] = []
    sender = threading.Thread(target=_send, args=(sock, total, errors))
    sender.start()
    h = hashlib.sha1()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    received = 0
    while n := sock.recv_into(buf):
        h.update(view[:n])
        received += n
    sender.join()
    if errors:
        raise errors[0]
    return {"sent": total, "received": received, "sha1": h.hexdigest()}


def _address(proto: str, addr: str, port: int | None) -> tuple[int, object]:
    if proto == "unix":
        return socket.AF_UNIX, (b"\0" + addr[1:].encode() if addr.startswith("@") else addr)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return family, (addr, port)


def main() -> int:
    p = argparse.ArgumentParser(prog="lab.bulk")
    p.add_argument("role", choices=["listen", "connect"])
    p.add_argument("proto", choices=["tcp", "unix"])
    p.add_argument("addr")
    p.add_argument("port", nargs="?", type=int)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    opts = p.parse_args()
    family, address = _address(opts.proto, opts.addr, opts.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(opts.timeout)
    if opts.role == "listen":
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1)
        print("READY", flush=True)
        conn, _ = sock.accept()
        sock.close()
        sock = conn
        sock.settimeout(opts.timeout)
    else:
        sock.connect(address)
    with sock:
        result = transfer(sock, opts.bytes)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
