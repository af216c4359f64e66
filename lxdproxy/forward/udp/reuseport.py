"""The bpf(2) calls behind a UDP listener's reuseport group (ctypes; the bytes are in
``reuseport_prog``).

``create_map`` + ``load_program`` make one listener's selector, ``attach`` hangs it on the
group, ``put_socket`` fills a worker's slot. The kernel takes a socket out of the map by itself
when the socket closes (its worker died), which is what lets the survivors keep their clients.
Every failure is an OSError with the kernel's errno; ``unavailable()`` says, once, why this
machine cannot do it (no CAP_BPF, seccomp, an old kernel), so the pool keeps one reader per
device instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct

from lxdproxy.forward.udp.reuseport_prog import (
    BPF_MAP_CREATE,
    BPF_MAP_UPDATE_ELEM,
    BPF_PROG_LOAD,
    LICENSE,
    SO_ATTACH_REUSEPORT_EBPF,
    map_create_attr,
    map_update_attr,
    prog_load_attr,
    select_by_hash_program,
)

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_LOG_SIZE = 64 * 1024
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) is not supported on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def create_map(slots: int) -> int:
    """A REUSEPORT_SOCKARRAY of ``slots`` entries (fd, close-on-exec)."""
    return _bpf(BPF_MAP_CREATE, map_create_attr(slots))


def load_program(slots: int, map_fd: int) -> int:
    """The slot selector over ``map_fd`` (fd). A verifier refusal carries the verifier's log."""
    code = select_by_hash_program(slots, map_fd)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    try:
        return _bpf(BPF_PROG_LOAD, prog_load_attr(ctypes.addressof(insns), len(code) // 8,
                                                  ctypes.addressof(lic)))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EACCES):
            raise
    log = ctypes.create_string_buffer(_LOG_SIZE)
    try:
        return _bpf(BPF_PROG_LOAD, prog_load_attr(ctypes.addressof(insns), len(code) // 8,
                                                  ctypes.addressof(lic),
                                                  ctypes.addressof(log), _LOG_SIZE))
    except OSError as exc:
        text = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(exc.errno, f"{exc.strerror}: {text[-1] if text else 'no verifier log'}"
                      ) from None


def attach(sock: socket.socket, prog_fd: int) -> None:
    """Hang the program on ``sock``'s reuseport group (every member shares it)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, struct.pack("i", prog_fd))


def put_socket(map_fd: int, slot: int, sock_fd: int) -> None:
    """``map[slot] = sock_fd``: a bound SO_REUSEPORT socket of the group (replaces any)."""
    key = ctypes.c_uint32(slot)
    value = ctypes.c_uint64(sock_fd)
    _bpf(BPF_MAP_UPDATE_ELEM, map_update_attr(map_fd, ctypes.addressof(key),
                                              ctypes.addressof(value)))


def unavailable() -> str | None:
    """Why this process cannot build a selector (None: it can): makes and drops a one-slot
    map and program."""
    fds: list[int] = []
    try:
        fds.append(create_map(1))
        fds.append(load_program(1, fds[0]))
    except OSError as exc:
        return f"bpf(2) refused ({exc.strerror or exc})"
    finally:
        for fd in fds:
            os.close(fd)
    return None


__all__ = ["attach", "create_map", "load_program", "put_socket", "unavailable"]
