"""UDP segmentation offload, both ways: GRO on receive (``UDP_GRO``: the kernel hands over a run
of same-size datagrams of one flow as one buffer, the control message gives the segment size)
and GSO on send (``UDP_SEGMENT``: one ``sendmsg`` carries a run of same-size datagrams to one
destination; the kernel cuts it into datagrams again, in order, the last one possibly shorter).

The grouping is pure: datagram lengths in, runs out.
"""

from __future__ import annotations

import errno
import socket
import struct

# Linux's values (the socket module names them only from Python 3.12 on).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
# The kernel refuses a GSO send of more segments than this (UDP_MAX_SEGMENTS, 64 on every
# kernel that has GSO; newer ones allow more).
MAX_SEGMENTS = 64
# One GSO send is one IP datagram before segmentation: its UDP payload fits in 64 KiB.
MAX_RUN_BYTES = 65507
# A GSO send the path refused (no offload, an MTU below the segment): send one by one.
GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT,
                         errno.EOPNOTSUPP})
_IP_MTU = 14
_IPV6_MTU = 24
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")

Cmsg = tuple[int, int, bytes]


def gso_runs(lengths: list[int], max_segment: int, *, max_segments: int = MAX_SEGMENTS,
             max_bytes: int = MAX_RUN_BYTES) -> list[tuple[int, int]]:
    """Cut consecutive datagrams into (start, count) runs one GSO send can carry: every datagram
    of a run but the last is as long as the first, the last no longer, the first at most
    ``max_segment`` bytes, at most ``max_segments`` datagrams and ``max_bytes`` in all. A run of
    one is a plain send. Order is kept: runs cover ``lengths`` front to back."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(lengths)
    while i < n:
        size = lengths[i]
        j, total = i + 1, size
        if 0 < size <= max_segment:
            limit = min(n, i + max_segments)
            while j < limit and total + lengths[j] <= max_bytes:
                length = lengths[j]
                if length > size:
                    break
                total += length
                j += 1
                if length < size:  # a shorter one ends the run
                    break
        runs.append((i, j - i))
        i = j
    return runs


def split_gro(length: int, segment: int) -> list[tuple[int, int]]:
    """(offset, length) of each datagram in a GRO buffer of ``length`` bytes cut every
    ``segment`` bytes."""
    if segment <= 0:
        return [(0, length)]
    return [(at, min(segment, length - at)) for at in range(0, length, segment)]


def segment_cmsg(size: int) -> list[Cmsg]:
    """The control message of a GSO send cut into ``size``-byte datagrams."""
    return [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]


def gro_segment(data: bytes) -> int:
    """The segment size from a UDP_GRO control message's data."""
    return _I32.unpack_from(data)[0] if len(data) >= 4 else _U16.unpack_from(data)[0]


def enable_gro(sock: socket.socket) -> bool:
    """Ask for GRO on a UDP socket; False where the kernel has no UDP_GRO."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def max_segment(sock: socket.socket) -> int:
    """The largest segment a GSO send on this connected socket may carry (its path MTU less the
    IP and UDP headers: the kernel refuses larger ones), 0 when it cannot be known."""
    try:
        if sock.family == socket.AF_INET6:
            return sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU) - 48
        return sock.getsockopt(socket.IPPROTO_IP, _IP_MTU) - 28
    except OSError:
        return 0
