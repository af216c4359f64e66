"""Many datagrams per system call: ``recvmmsg(2)`` through ctypes (the socket module has no
binding), and the pure parts around it (the ``mmsghdr`` array's bytes, control messages,
socket addresses) that are tested from bytes.

One ``recvmmsg`` call fills up to ``slots`` datagrams, each in its own 64 KiB slot of an
anonymous mapping, so no datagram is ever truncated. The mapping's pages are resident only once
the kernel writes to them: an idle listener costs address space, not memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

# recvmmsg(2)'s flag: do not block even on a blocking socket.
MSG_DONTWAIT = 0x40
# Room for a sockaddr_in6 (28 bytes), rounded up so every slot stays 8-byte aligned.
NAME_SIZE = 32


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32)]


IOVEC_SIZE = ctypes.sizeof(_Iovec)
MMSGHDR_SIZE = ctypes.sizeof(_Mmsghdr)
_LEN_AT = _Mmsghdr.msg_len.offset
_NAMELEN_AT = _Msghdr.msg_namelen.offset
_CONTROLLEN_AT = _Msghdr.msg_controllen.offset
_FLAGS_AT = _Msghdr.msg_flags.offset
# The hot path reads msg_len and msg_namelen as 32-bit words of the array.
LEN_WORD = _LEN_AT // 4
NAMELEN_WORD = _NAMELEN_AT // 4
WORDS_PER_MSG = MMSGHDR_SIZE // 4
# ... and msg_controllen (a size_t) as a 64-bit one.
CONTROLLEN_QWORD = _CONTROLLEN_AT // 8
QWORDS_PER_MSG = MMSGHDR_SIZE // 8

# struct msghdr's fields in native layout (the ctypes structure above gives the same offsets).
_MSGHDR = struct.Struct("@PIPNPNi")
_IOVEC = struct.Struct("=QQ")
_CMSGHDR = struct.Struct("=Qii")  # cmsg_len (size_t), cmsg_level, cmsg_type
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)


class RecvResult(NamedTuple):
    """What the kernel wrote for one received message."""

    length: int
    namelen: int
    controllen: int
    flags: int


def pack_recv_headers(count: int, *, names: int, iovecs: int, control: int,
                      control_size: int) -> bytes:
    """The ``mmsghdr`` array for ``count`` messages: message i's address goes to
    ``names + i * NAME_SIZE``, its data to the iovec at ``iovecs + i * IOVEC_SIZE`` and its
    control messages to ``control + i * control_size`` (addresses are plain integers)."""
    if struct.calcsize("@PIPNPN") != _FLAGS_AT or _SIZE_T != 8:
        raise OSError("recvmmsg batching needs a 64-bit Linux ABI")
    out = bytearray(MMSGHDR_SIZE * count)
    for i in range(count):
        _MSGHDR.pack_into(out, i * MMSGHDR_SIZE,
                          names + i * NAME_SIZE, NAME_SIZE, iovecs + i * IOVEC_SIZE, 1,
                          control + i * control_size if control_size else 0, control_size, 0)
    return bytes(out)


def pack_iovecs(base: int, slot_size: int, count: int) -> bytes:
    """``count`` iovecs, one ``slot_size`` slot each, back to back from address ``base``."""
    return b"".join(_IOVEC.pack(base + i * slot_size, slot_size) for i in range(count))


def unpack_results(headers: bytes | memoryview, count: int) -> list[RecvResult]:
    """What the kernel wrote into the first ``count`` entries of an ``mmsghdr`` array."""
    out = []
    for i in range(count):
        at = i * MMSGHDR_SIZE
        f = _MSGHDR.unpack_from(headers, at)
        (length,) = struct.unpack_from("=I", headers, at + _LEN_AT)
        out.append(RecvResult(length, f[1], f[5], f[6]))
    return out


def iter_cmsgs(control: bytes | memoryview) -> Iterator[tuple[int, int, bytes]]:
    """(level, type, data) of each control message in a received control buffer."""
    at, end = 0, len(control)
    while at + _CMSGHDR.size <= end:
        length, level, kind = _CMSGHDR.unpack_from(control, at)
        if length < _CMSGHDR.size or at + length > end:
            raise ValueError(f"malformed control message at {at} (cmsg_len {length})")
        yield level, kind, bytes(control[at + _CMSGHDR.size:at + length])
        at += (length + 7) & ~7  # CMSG_ALIGN


def sockaddr_to_address(raw: bytes | memoryview) -> tuple:
    """A ``sockaddr_in``/``sockaddr_in6`` as the socket module spells it:
    (host, port) or (host, port, flowinfo, scope_id)."""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        port, addr = struct.unpack_from("!H4s", raw, 2)
        return (socket.inet_ntop(socket.AF_INET, addr), port)
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flowinfo, addr = struct.unpack_from("!HI16s", raw, 2)
        (scope_id,) = struct.unpack_from("=I", raw, 24)
        return (socket.inet_ntop(socket.AF_INET6, addr), port, flowinfo, scope_id)
    raise ValueError(f"not an IPv4 or IPv6 socket address (family {family}, {len(raw)} bytes)")


def _libc_recvmmsg():  # type: ignore[no-untyped-def]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.recvmmsg
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_recvmmsg = _libc_recvmmsg()


class MmsgReceiver:
    """Preallocated buffers for ``recvmmsg`` on any datagram socket: ``slots`` datagrams of up
    to ``slot_size`` bytes per call, with their addresses and ``control_size`` bytes of control
    messages each.

    After ``recv`` returned n, message i's data is ``data[i * slot_size:][:length(i)]``; the
    caller must copy what it keeps before the next ``recv``.
    """

    def __init__(self, slots: int, slot_size: int, control_size: int = 0) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self.control_size = control_size
        self._data = mmap.mmap(-1, slots * slot_size)
        self._names = bytearray(slots * NAME_SIZE)
        self._control = bytearray(max(1, slots * control_size))
        self._iov = bytearray(slots * IOVEC_SIZE)
        self._hdrs = bytearray(slots * MMSGHDR_SIZE)
        # ctypes views pin each buffer's address for the life of this object.
        self._c = [ctypes.c_char.from_buffer(b)
                   for b in (self._data, self._names, self._control, self._iov, self._hdrs)]
        data, names, control, iov, hdrs = (ctypes.addressof(c) for c in self._c)
        self._iov[:] = pack_iovecs(data, slot_size, slots)
        self._template = pack_recv_headers(slots, names=names, iovecs=iov, control=control,
                                           control_size=control_size)
        self._hdrs[:] = self._template
        self._hdrs_addr = hdrs
        self.data = memoryview(self._data)
        self.names = memoryview(self._names)
        self.control = memoryview(self._control)
        self.words = memoryview(self._hdrs).cast("I")
        self.qwords = memoryview(self._hdrs).cast("Q")
        self._used = 0

    def recv(self, fd: int) -> int:
        """Receive up to ``slots`` datagrams without blocking; 0 when none is waiting.
        Raises OSError for anything else."""
        used = self._used
        if used:  # the kernel rewrote msg_namelen/msg_controllen/msg_len of those it filled
            end = used * MMSGHDR_SIZE
            self._hdrs[:end] = self._template[:end]
        n = _recvmmsg(fd, self._hdrs_addr, self.slots, MSG_DONTWAIT, None)
        if n < 0:
            self._used = 0
            err = ctypes.get_errno()
            if err in (11, 4):  # EAGAIN, EINTR
                return 0
            raise OSError(err, os.strerror(err))
        self._used = n
        return n

    def results(self, count: int) -> list[RecvResult]:
        return unpack_results(memoryview(self._hdrs), count)
