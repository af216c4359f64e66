"""Checks LXD skips at validation although the device can then never start (spec §9.2, §9.7, §9.8).

LXD accepts these configs and fails later, at device start (often failing the instance start).
We reject them up front, using LXD's own start-time words where it has some. They run after all
of LXD's own rules, so a config LXD rejects always gets LXD's message. See docs/compatibility.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lxdproxy.config.gonet import parse_ip, to4
from lxdproxy.config.gostrconv import go_quote
from lxdproxy.config.keys import EXT_NAT_WILDCARD, is_true
from lxdproxy.config.model import ConnType, ProxyAddress
from lxdproxy.errors import ConfigError

MAX_PORT = 65535
# struct sockaddr_un.sun_path is 108 bytes: 107 for a path plus its NUL, or NUL + 107 for an
# abstract name.
MAX_UNIX_PATH_BYTES = 107


def _byte_length(text: str) -> int:
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape can't map back
        return len(text.encode("utf-8", "surrogatepass"))


def _option_error(key: str, inner: str) -> ConfigError:
    return ConfigError(f"Invalid value for device option {go_quote(key)}: {inner}")


def check_address_startable(key: str, addr: ProxyAddress) -> None:
    """Per-side checks: port bounds, duplicate listen ports, unix path limits."""
    if addr.conn_type is ConnType.UNIX:
        name = addr.address[1:] if addr.abstract else addr.address
        if not addr.abstract and "\x00" in name:
            raise _option_error(key, "Unix socket path contains a NUL byte")
        if _byte_length(name) > MAX_UNIX_PATH_BYTES:
            raise _option_error(
                key,
                f"Unix socket address {go_quote(addr.address)} is too long "
                f"(at most {MAX_UNIX_PATH_BYTES} bytes)",
            )
        return
    for port in addr.ports:
        # Port 0 can't be reached: a listener would get a random port, a dial is refused.
        if not 1 <= port <= MAX_PORT:
            raise _option_error(key, f'Invalid port "{port}": must be between 1 and {MAX_PORT}')
    if key == "listen":
        seen: set[int] = set()
        for port in addr.ports:
            if port in seen:
                raise _option_error(key, f"Duplicate listen port {port}")
            seen.add(port)


def check_pair_startable(listen: ProxyAddress, connect: ProxyAddress, nat: bool) -> None:
    """forkproxy's (and the NAT driver's) start-time refusals, with their words."""
    if listen.conn_type is ConnType.UDP and connect.conn_type is not ConnType.UDP:
        raise ConfigError("Proxying from udp to non-udp protocol is not supported")
    if connect.conn_type is not ConnType.UNIX and listen.conn_type is not ConnType.UNIX:
        n_listen, n_connect = len(listen.ports), len(connect.ports)
        if n_connect > 1 and n_connect != n_listen:
            if nat:
                raise ConfigError("Mismatch between listen port(s) and target port(s) count")
            raise ConfigError("Invalid port range")


def check_nat_startable(raw: Mapping[str, str], listen: ProxyAddress, connect: ProxyAddress) -> None:
    """NAT quirks §9.7 (empty host) and §9.8 (IPv4-mapped listen/connect family)."""
    if listen.address == "":
        # LXD lets `tcp::80` through its wildcard check (nil IP) and fails at start.
        if is_true(raw.get(EXT_NAT_WILDCARD, "")):
            raise ConfigError(
                'Cannot use an empty listen address in nat mode (use "0.0.0.0" or "::")'
            )
        raise ConfigError('Cannot listen on wildcard address "" when in nat mode')
    if connect.address == "":
        # setupNAT compares the connect host with the NIC's static IPs; "" never matches.
        raise ConfigError(
            'Cannot use an empty connect address in nat mode (use the instance\'s static IP, '
            '"0.0.0.0" or "::")'
        )
    for addr in (listen, connect):
        ip = parse_ip(addr.address)
        four = to4(ip) if ip is not None else None
        if four is not None and ":" in addr.address:
            # LXD validates the family with To4() but setupNAT uses "contains ':'", so an
            # IPv4-mapped address is IPv4 for one and IPv6 for the other and never starts.
            plain = ".".join(str(b) for b in four)
            raise ConfigError(
                f"Cannot use IPv4-mapped address {go_quote(addr.address)} in nat mode "
                f"(use {go_quote(plain)})"
            )


__all__ = [
    "MAX_PORT",
    "MAX_UNIX_PATH_BYTES",
    "check_address_startable",
    "check_nat_startable",
    "check_pair_startable",
]
