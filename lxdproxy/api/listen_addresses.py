"""The addresses an HTTPS listener is reachable at, as LXD's ``util.ListenAddresses`` lists them.

``GET /1.0`` (``environment.addresses``) and certificate add tokens carry them; ``lxc remote add
<token>`` tries each. For a wildcard listen address LXD lists every global unicast address of
every interface (Go's ``IsGlobalUnicast``: private ranges count, loopback, link-local and
multicast do not), IPv4 only for ``0.0.0.0``; otherwise the address as given.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from collections.abc import Iterable

from lxdproxy.forward.plan import join_host_port

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def go_global_unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Go's net.IP.IsGlobalUnicast."""
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return False
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local)


def listen_addresses(host: str, port: int, interface_ips: Iterable[str]) -> list[str]:
    """Pure: LXD's list for ``host:port`` given the machine's interface addresses in order."""
    if host not in _WILDCARDS:
        return [join_host_port(host, port)]
    out = []
    for text in interface_ips:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if not go_global_unicast(ip):
            continue
        if ip.version == 6 and host == "0.0.0.0":
            continue
        out.append(join_host_port(str(ip), port))
    return out


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [("ifa_next", ctypes.POINTER(_Ifaddrs)), ("ifa_name", ctypes.c_char_p),
                     ("ifa_flags", ctypes.c_uint), ("ifa_addr", ctypes.POINTER(_Sockaddr)),
                     ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
                     ("ifa_ifu", ctypes.POINTER(_Sockaddr)), ("ifa_data", ctypes.c_void_p)]


def interface_ips() -> list[str]:
    """Every IPv4/IPv6 address of this network namespace's interfaces (getifaddrs(3)), grouped
    by interface in the order the interfaces come (as Go's net.Interfaces then Addrs gives them:
    getifaddrs lists every interface's link entry first, in index order, then all IPv4, then
    all IPv6)."""
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        raise OSError(ctypes.get_errno(), "getifaddrs failed")
    by_interface: dict[bytes, list[str]] = {}
    try:
        node = head
        while node:
            ips = by_interface.setdefault(node.contents.ifa_name or b"", [])
            addr = node.contents.ifa_addr
            if addr:
                family = addr.contents.sa_family
                raw = ctypes.string_at(addr, 28 if family == socket.AF_INET6 else 16)
                if family == socket.AF_INET:
                    ips.append(socket.inet_ntop(socket.AF_INET, raw[4:8]))
                elif family == socket.AF_INET6:
                    ips.append(socket.inet_ntop(socket.AF_INET6, raw[8:24]))
            node = node.contents.ifa_next
    finally:
        libc.freeifaddrs(head)
    return [ip for ips in by_interface.values() for ip in ips]
