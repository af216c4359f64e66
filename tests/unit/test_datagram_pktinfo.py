"""Pure parsing of IP_PKTINFO / IPV6_PKTINFO for wildcard UDP listeners."""

from __future__ import annotations

import socket
import struct

import pytest

from lxdproxy.forward.udp.pktinfo import (
    IP_PKTINFO,
    is_pktinfo,
    is_wildcard,
    parse_pktinfo,
)


def _in_pktinfo(ifindex: int, spec_dst: str, addr: str) -> bytes:
    return struct.pack("=i4s4s", ifindex, socket.inet_aton(spec_dst), socket.inet_aton(addr))


def test_ipv4_reply_leaves_from_the_local_address_and_header_gets_the_destination():
    # A broadcast to 198.18.0.255 arriving on the interface whose address is 198.18.0.254.
    raw = _in_pktinfo(7, "198.18.0.254", "198.18.0.255")
    local, cmsg = parse_pktinfo(raw)
    assert local == "198.18.0.255"
    assert cmsg == [(socket.IPPROTO_IP, IP_PKTINFO,
                     _in_pktinfo(0, "198.18.0.254", "0.0.0.0"))]


def test_ipv6():
    addr = socket.inet_pton(socket.AF_INET6, "fd42::254")
    raw = addr + struct.pack("=I", 3)
    local, cmsg = parse_pktinfo(raw)
    assert local == "fd42::254"
    assert cmsg == [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + b"\0\0\0\0")]


def test_garbage_is_a_value_error():
    with pytest.raises(ValueError, match="not a pktinfo"):
        parse_pktinfo(b"\1\2\3")


def test_is_pktinfo_knows_both_families():
    assert is_pktinfo(socket.IPPROTO_IP, IP_PKTINFO)
    assert is_pktinfo(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
    assert not is_pktinfo(socket.SOL_SOCKET, 29)
    assert not is_pktinfo(17, 104)  # UDP_GRO


@pytest.mark.parametrize(("host", "expected"), [
    ("0.0.0.0", True), ("::", True), ("", True),
    ("127.0.0.1", False), ("::1", False), ("198.18.0.1", False),
])
def test_is_wildcard(host, expected):
    assert is_wildcard(host) is expected
