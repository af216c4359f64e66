"""Client-side helpers for lab tests: send a payload through a stream, half-close, read to EOF."""

from __future__ import annotations

import socket
import time
from typing import Any


def _exchange(sock: socket.socket, address: Any, payload: bytes) -> bytes:
    with sock:
        sock.connect(address)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def roundtrip(place: Any, host: str, port: int, payload: bytes = b"ping",
              family: int = socket.AF_INET) -> bytes:
    """Connect from ``place`` (lab.host, an instance or a client), send, half-close, read to EOF."""
    return _exchange(place.socket(family, socket.SOCK_STREAM), (host, port), payload)


def eventually_roundtrip(place: Any, host: str, port: int, payload: bytes = b"ping",
                         timeout: float = 10.0) -> bytes:
    """``roundtrip``, retried while the listener is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return roundtrip(place, host, port, payload)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def unix_roundtrip(path: str, payload: bytes = b"ping") -> bytes:
    """The same through a unix stream socket in our own mount namespace."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    return _exchange(sock, path, payload)
