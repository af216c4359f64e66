"""Which local address a datagram reached, for UDP listeners bound to a wildcard address.

A socket bound to ``0.0.0.0`` or ``::`` answers with ``sendto`` from whatever source address the
routing table picks. On a host with several addresses that is often not the one the client
sent to, and a client with a connected socket (most DNS resolvers, anything checking the
source) drops the reply. LXD's forkproxy has that problem (Go's ``WriteTo`` on a wildcard
``ListenPacket``). We ask the kernel for each datagram's destination (IP_PKTINFO /
IPV6_RECVPKTINFO) and answer from that address; the same address goes into the PROXY v2
header's destination instead of the wildcard.

The parsing is pure: ancillary data in, addresses and the reply's control message out.
"""

from __future__ import annotations

import socket
import struct

# Linux's value; the socket module only names it from Python 3.12 on.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)

# in6_pktinfo is 20 bytes, in_pktinfo 12: room for either.
ANCBUF_SIZE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12)

_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_NO_ADDR4 = b"\0" * 4
_NO_IFINDEX = b"\0" * 4

Cmsg = tuple[int, int, bytes]
_PKTINFO_KINDS = ((socket.IPPROTO_IP, IP_PKTINFO), (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO))


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask for the destination address of every datagram. On an IPv6 socket IPv4 datagrams
    (dual-stack, v4-mapped clients) report through IP_PKTINFO, so both are set."""
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)


def is_pktinfo(level: int, kind: int) -> bool:
    return (level, kind) in _PKTINFO_KINDS


def parse_pktinfo(raw: bytes) -> tuple[str, list[Cmsg]]:
    """(the datagram's destination IP, the control messages that make a reply leave from the
    local address it reached). Raises ValueError on data that is neither pktinfo."""
    if len(raw) >= 20:  # in6_pktinfo: ipi6_addr, ipi6_ifindex
        addr = raw[:16]
        # Leave the interface to routing: the address alone picks the source.
        return (socket.inet_ntop(socket.AF_INET6, addr),
                [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + _NO_IFINDEX)])
    if len(raw) >= 12:  # in_pktinfo
        _ifindex, spec_dst, addr = _IN_PKTINFO.unpack_from(raw)
        # ipi_addr is what the client sent to (the header's destination, possibly a
        # broadcast address); ipi_spec_dst is the local address to answer from.
        return (socket.inet_ntop(socket.AF_INET, addr),
                [(socket.IPPROTO_IP, IP_PKTINFO,
                  _IN_PKTINFO.pack(0, spec_dst, _NO_ADDR4))])
    raise ValueError(f"not a pktinfo control message ({len(raw)} bytes)")
