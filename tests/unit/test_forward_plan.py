"""The device plan and Go-style start errors, from config values alone (no sockets)."""

from __future__ import annotations

import errno
import socket

import pytest

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.model import ConnType, ProxyAddress, ProxyDevice, ProxyProtocol
from lxdproxy.config.port_map import map_ports
from lxdproxy.errors import ConfigError
from lxdproxy.forward.plan import (
    HeaderKind,
    RelayKind,
    listen_error,
    plan_device,
)


def addr(text: str) -> ProxyAddress:
    kind, _, rest = text.partition(":")
    conn = ConnType(kind)
    if conn is ConnType.UNIX:
        return ProxyAddress(conn, rest, (), rest.startswith("@"))
    host, _, ports = rest.rpartition(":")
    expanded: list[int] = []
    for item in ports.split(","):
        lo, _, hi = item.partition("-")
        expanded += list(range(int(lo), int(hi or lo) + 1))
    return ProxyAddress(conn, host.strip("[]"), tuple(expanded))


def dev(listen: str, connect: str, **kw: object) -> ProxyDevice:
    lst, con = addr(listen), addr(connect)
    ip_pair = ConnType.UNIX not in (lst.conn_type, con.conn_type)
    return ProxyDevice(listen=lst, connect=con,  # type: ignore[arg-type]
                       port_map=map_ports(lst.ports, con.ports) if ip_pair else (), **kw)


@pytest.mark.parametrize(
    ("listen", "connect", "relay"),
    [
        ("tcp:127.0.0.1:80", "tcp:127.0.0.1:80", RelayKind.STREAM),
        ("tcp:127.0.0.1:80", "unix:/run/x.sock", RelayKind.STREAM),
        ("unix:/run/x.sock", "tcp:127.0.0.1:80", RelayKind.STREAM),
        ("unix:/run/x.sock", "unix:/tmp/y.sock", RelayKind.UNIX_RIGHTS),
        ("tcp:127.0.0.1:80", "udp:127.0.0.1:53", RelayKind.STREAM_TO_DATAGRAM),
        ("unix:@a", "udp:127.0.0.1:53", RelayKind.STREAM_TO_DATAGRAM),
        ("udp:127.0.0.1:53", "udp:127.0.0.1:53", RelayKind.DATAGRAM),
    ],
)
def test_the_seven_pairs(listen: str, connect: str, relay: RelayKind) -> None:
    assert plan_device(dev(listen, connect)).relay is relay


@pytest.mark.parametrize("connect", ["tcp:127.0.0.1:80", "unix:/x"])
def test_udp_to_stream_is_refused_by_the_gate_with_forkproxys_words(connect: str) -> None:
    # config/ is the one gate: the plan never sees such a device.
    with pytest.raises(ConfigError, match="^Proxying from udp to non-udp protocol is not supported$"):
        validate_proxy_device({"type": "proxy", "listen": "udp:127.0.0.1:53", "connect": connect})


def test_ports_map_by_position_or_all_to_one() -> None:
    p = plan_device(dev("tcp:127.0.0.1:1236,1234-1235", "tcp:127.0.0.1:4321-4323"))
    assert [(s.port, s.connect_port) for s in p.listeners] == [(1236, 4321), (1234, 4322),
                                                               (1235, 4323)]
    p = plan_device(dev("tcp:127.0.0.1:1-3", "tcp:127.0.0.1:9"))
    assert [(s.port, s.connect_port) for s in p.listeners] == [(1, 9), (2, 9), (3, 9)]
    p = plan_device(dev("tcp:127.0.0.1:1-3", "unix:/s"))
    assert [(s.port, s.connect_port) for s in p.listeners] == [(1, None), (2, None), (3, None)]
    for listen in ("tcp:127.0.0.1:1-3", "unix:/s"):
        with pytest.raises(ConfigError, match="port"):  # the gate refuses what cannot map
            validate_proxy_device({"type": "proxy", "listen": listen,
                                   "connect": "tcp:127.0.0.1:8-9"})


@pytest.mark.parametrize(
    ("listen", "family", "host", "dual"),
    [
        ("tcp:0.0.0.0:80", socket.AF_INET6, "::", True),
        ("tcp:[::]:80", socket.AF_INET6, "::", True),
        ("tcp::80", socket.AF_INET6, "::", True),
        ("tcp:[::ffff:0.0.0.0]:80", socket.AF_INET6, "::", True),
        ("tcp:10.0.0.1:80", socket.AF_INET, "10.0.0.1", False),
        ("tcp:[::ffff:10.0.0.1]:80", socket.AF_INET, "10.0.0.1", False),  # Go: IPv4
        ("tcp:[fd39::0]:80", socket.AF_INET6, "fd39::", False),
    ],
)
def test_listen_families_like_go(listen: str, family: int, host: str, dual: bool) -> None:
    spec = plan_device(dev(listen, "tcp:127.0.0.1:1")).listeners[0]
    assert (spec.family, spec.host, spec.dual_stack) == (family, host, dual)


@pytest.mark.parametrize(
    ("connect", "family", "host"),
    [
        ("tcp:0.0.0.0:80", socket.AF_INET, "127.0.0.1"),
        ("tcp::80", socket.AF_INET, "127.0.0.1"),
        ("tcp:[::]:80", socket.AF_INET6, "::1"),
        ("tcp:192.0.2.1:80", socket.AF_INET, "192.0.2.1"),
        ("udp:[2001:db8::1]:53", socket.AF_INET6, "2001:db8::1"),
        ("unix:@abs", socket.AF_UNIX, "@abs"),
    ],
)
def test_wildcard_connect_is_the_connect_sides_own_loopback(connect: str, family: int,
                                                            host: str) -> None:
    target = plan_device(dev("tcp:127.0.0.1:1", connect)).target
    assert (target.family, target.host) == (family, host)


def test_headers() -> None:
    v1 = ProxyProtocol.V1
    assert plan_device(dev("tcp:1.2.3.4:1", "tcp:1.2.3.4:1", proxy_protocol=v1)).header \
        is HeaderKind.V1
    # forkproxy sends its v1 header to tcp targets only
    assert plan_device(dev("tcp:1.2.3.4:1", "unix:/x", proxy_protocol=v1)).header \
        is HeaderKind.NONE
    assert plan_device(dev("udp:1.2.3.4:1", "udp:1.2.3.4:1",
                           proxy_protocol=ProxyProtocol.V2)).header is HeaderKind.V2


def _spec(listen: str):
    return plan_device(dev(listen, "tcp:127.0.0.1:1")).listeners[0]


@pytest.mark.parametrize(
    ("listen", "err", "text"),
    [
        ("tcp:127.0.0.1:1234", errno.EADDRINUSE,
         "Failed listening on 127.0.0.1:1234: listen tcp 127.0.0.1:1234: bind: address already "
         "in use"),
        ("tcp:[fd39::0]:80", errno.EADDRNOTAVAIL,
         "Failed listening on [fd39::0]:80: listen tcp [fd39::]:80: bind: cannot assign "
         "requested address"),
        ("tcp::80", errno.EACCES,
         "Failed listening on :80: listen tcp :80: bind: permission denied"),
        ("tcp:0.0.0.0:80", errno.EADDRINUSE,
         "Failed listening on 0.0.0.0:80: listen tcp 0.0.0.0:80: bind: address already in use"),
        ("udp:127.0.0.1:53", errno.EADDRINUSE,
         "listen udp 127.0.0.1:53: bind: address already in use"),
        ("unix:/run/x.sock", errno.ENOENT,
         "Failed listening on /run/x.sock: listen unix /run/x.sock: bind: no such file or "
         "directory"),
    ],
)
def test_listen_errors_read_like_go(listen: str, err: int | None, text: str) -> None:
    spec = plan_device(dev(listen, "udp:127.0.0.1:1" if listen.startswith("udp") else
                           "tcp:127.0.0.1:1")).listeners[0]
    exc: BaseException = OSError(err, __import__("os").strerror(err)) if err else ValueError()
    assert listen_error(spec, exc) == text
