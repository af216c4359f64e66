"""setns(2) through ctypes: Python 3.11 has no os.setns."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


def setns(path_or_fd: str | int, nstype: int) -> None:
    """Move the calling thread into the namespace (a whole process for user/mount)."""
    fd = os.open(path_or_fd, os.O_RDONLY | os.O_CLOEXEC) if isinstance(path_or_fd, str) else path_or_fd
    try:
        if _libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)} - Failed setns to {path_or_fd}")
    finally:
        if isinstance(path_or_fd, str):
            os.close(fd)
