"""Ports of Go 1.19's ``net.SplitHostPort`` and ``net.ParseIP`` (LXD 5.0.2 is built with Go 1.19).

Python's ``ipaddress`` disagrees with Go on exactly the inputs users get wrong (zones, leading
zeros, IPv4 embedded in IPv6, over-long hex groups), so the address grammar runs on these
faithful ports instead. IPs are 16-byte values, IPv4 in its IPv4-mapped form, as in Go.
"""

from __future__ import annotations

import ipaddress

_V4_IN_V6_PREFIX = bytes(10) + b"\xff\xff"
_BIG = 0xFFFFFF  # Go's "big": bigger than any IP component we care about


class GoAddrError(ValueError):
    """A ``*net.AddrError``; ``str()`` is Go's exact ``Error()`` text."""

    def __init__(self, addr: str, reason: str) -> None:
        self.addr = addr
        self.reason = reason
        super().__init__(f"address {addr}: {reason}" if addr else reason)


def split_host_port(hostport: str) -> tuple[str, str]:
    """``net.SplitHostPort``: the last colon separates the port; IPv6 hosts need brackets."""
    missing_port = "missing port in address"
    too_many_colons = "too many colons in address"
    i = hostport.rfind(":")
    if i < 0:
        raise GoAddrError(hostport, missing_port)
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise GoAddrError(hostport, "missing ']' in address")
        if end + 1 == len(hostport):
            raise GoAddrError(hostport, missing_port)
        if end + 1 != i:
            # Either ']' isn't followed by a colon, or it is followed by one that isn't the last.
            if hostport[end + 1] == ":":
                raise GoAddrError(hostport, too_many_colons)
            raise GoAddrError(hostport, missing_port)
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            raise GoAddrError(hostport, too_many_colons)
    if "[" in hostport[j:]:
        raise GoAddrError(hostport, "unexpected '[' in address")
    if "]" in hostport[k:]:
        raise GoAddrError(hostport, "unexpected ']' in address")
    return host, hostport[i + 1 :]


def _dtoi(s: str) -> tuple[int, int, bool]:
    n = i = 0
    while i < len(s) and "0" <= s[i] <= "9":
        n = n * 10 + ord(s[i]) - 48
        if n >= _BIG:
            return _BIG, i, False
        i += 1
    return (n, i, i > 0)


def _xtoi(s: str) -> tuple[int, int, bool]:
    n = i = 0
    while i < len(s):
        ch = s[i]
        if "0" <= ch <= "9":
            n = n * 16 + ord(ch) - 48
        elif "a" <= ch <= "f":
            n = n * 16 + ord(ch) - 87
        elif "A" <= ch <= "F":
            n = n * 16 + ord(ch) - 55
        else:
            break
        if n >= _BIG:
            return 0, i, False
        i += 1
    return (n, i, i > 0)


def _parse_ipv4(s: str) -> bytes | None:
    octets = bytearray()
    for index in range(4):
        if not s:
            return None
        if index > 0:
            if s[0] != ".":
                return None
            s = s[1:]
        n, c, ok = _dtoi(s)
        if not ok or n > 0xFF:
            return None
        if c > 1 and s[0] == "0":  # Go >= 1.17 rejects leading zeros (octal ambiguity)
            return None
        s = s[c:]
        octets.append(n)
    if s:
        return None
    return _V4_IN_V6_PREFIX + bytes(octets)


def _parse_ipv6(s: str) -> bytes | None:
    ip = bytearray(16)
    ellipsis = -1
    if len(s) >= 2 and s[0] == ":" and s[1] == ":":
        ellipsis = 0
        s = s[2:]
        if not s:
            return bytes(ip)
    i = 0
    while i < 16:
        n, c, ok = _xtoi(s)
        if not ok or n > 0xFFFF:
            return None
        if c < len(s) and s[c] == ".":  # trailing IPv4
            if ellipsis < 0 and i != 12:
                return None
            if i + 4 > 16:
                return None
            ip4 = _parse_ipv4(s)
            if ip4 is None:
                return None
            ip[i : i + 4] = ip4[12:]
            s = ""
            i += 4
            break
        ip[i] = n >> 8
        ip[i + 1] = n & 0xFF
        i += 2
        s = s[c:]
        if not s:
            break
        if s[0] != ":" or len(s) == 1:
            return None
        s = s[1:]
        if s[0] == ":":
            if ellipsis >= 0:
                return None
            ellipsis = i
            s = s[1:]
            if not s:
                break
    if s:
        return None
    if i < 16:
        if ellipsis < 0:
            return None
        n = 16 - i
        ip[ellipsis + n : 16] = ip[ellipsis:i]
        ip[ellipsis : ellipsis + n] = bytes(n)
    elif ellipsis >= 0:
        return None  # the ellipsis must stand for at least one zero group
    return bytes(ip)


def parse_ip(s: str) -> bytes | None:
    """``net.ParseIP``: 16 bytes, or None. The first '.' or ':' decides the family."""
    for ch in s:
        if ch == ".":
            return _parse_ipv4(s)
        if ch == ":":
            return _parse_ipv6(s)
    return None


def to4(ip: bytes) -> bytes | None:
    """``IP.To4``: the 4-byte form of an IPv4 (or IPv4-mapped) address, else None."""
    if len(ip) == 16 and ip[:12] == _V4_IN_V6_PREFIX:
        return ip[12:]
    return None


def ip_string(ip: bytes) -> str:
    """``IP.String`` for a 16-byte IP: dotted quad when IPv4-mapped, else RFC 5952 IPv6."""
    import ipaddress

    four = to4(ip)
    if four is not None:
        return str(ipaddress.IPv4Address(four))
    return str(ipaddress.IPv6Address(ip))


IPV4_ZERO = _V4_IN_V6_PREFIX + bytes(4)
IPV6_ZERO = bytes(16)

__all__ = ["GoAddrError", "IPV4_ZERO", "IPV6_ZERO", "ip_string", "parse_ip", "split_host_port", "to4"]


def to_ipaddress(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``net.ParseIP`` as a Python address, IPv4-mapped folded to IPv4 (Go's ``To4``): the one
    IP parser below the grammar, so every layer reads an address the way the validator did."""
    ip = parse_ip(s)
    if ip is None:
        return None
    four = to4(ip)
    return ipaddress.IPv4Address(four) if four is not None else ipaddress.IPv6Address(ip)
