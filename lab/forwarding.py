"""Driving a Forwarder in the lab: start a device with the lab's namespaces, stream round trips
from a lab place, and the fd count that leak checks compare.

Client I/O runs in threads (``asyncio.to_thread``): the forwarder under test lives on the test's
own event loop, so a blocking client call on that loop would deadlock it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from typing import Any

from lxdproxy.config.model import ProxyDevice
from lxdproxy.forward.forwarder import Forwarder

Address = tuple[Any, ...] | str | bytes


def unix_address(path: str) -> str | bytes:
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def _roundtrip(sock: socket.socket, addr: Address, payload: bytes, half_close: bool,
               expect: int | None) -> bytes:
    with sock:
        sock.settimeout(15)
        sock.connect(unix_address(addr) if isinstance(addr, str) else addr)
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while expect is None or len(data) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


async def roundtrip(place: Any, addr: Address, payload: bytes = b"hello", *,
                    family: int | None = None, half_close: bool = True,
                    expect: int | None = None) -> bytes:
    """Connect from ``place`` (lab.host, an instance, a client; None = this process), send,
    half-close (unless told not to), read until EOF or until ``expect`` bytes came back."""
    if isinstance(addr, str):
        family = socket.AF_UNIX
    elif family is None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    if place is None:  # only for unix paths: this process is in the machine's own netns
        sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        sock = await asyncio.to_thread(place.socket, family, socket.SOCK_STREAM)
    return await asyncio.to_thread(_roundtrip, sock, addr, payload, half_close, expect)


async def started(fwd: Forwarder, name: str, device: ProxyDevice, *, host: Any, inst: Any,
                  instance_name: str = "c1") -> tuple[str, str]:
    """Start ``device`` of instance ``inst`` with ``host`` (lab.host) as the daemon's side."""
    key = (instance_name, name)
    host_ns, inst_ns = host.namespaces, inst.namespaces
    if device.bind.value == "host":
        listen_ns, connect_ns = host_ns, inst_ns
    else:
        listen_ns, connect_ns = inst_ns, host_ns
    await fwd.start(key, device, listen_ns=listen_ns, connect_ns=connect_ns,
                    instance_name=instance_name)
    return key


def fd_count() -> int:
    # Collect first: earlier tests may leave unreachable objects holding fds (e.g. a Popen's
    # stdout pipe) that the collector would otherwise close in the middle of a measurement.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))
