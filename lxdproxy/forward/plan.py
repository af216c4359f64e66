"""What a proxy device needs at runtime, decided from its config alone (no I/O).

``plan_device(device)`` turns a validated ``ProxyDevice`` into listeners to open, the target to dial
and the relay to use. Configs that can never start were refused by config/ already (the one gate);
what can still fail is the kernel's answer at start (``PlanError``, with the text LXD's forkproxy
prints: Go's ``net`` error texts are rebuilt here, so a start failure reads like LXD's).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import socket
from dataclasses import dataclass

from lxdproxy.config.gonet import to_ipaddress
from lxdproxy.config.model import ConnType, ProxyDevice, ProxyProtocol


class PlanError(Exception):
    """A device the kernel would not start; ``str()`` is forkproxy's ``Error:`` line body."""


class RelayKind(enum.Enum):
    STREAM = "stream"  # tcp/unix -> tcp/unix: splice (or copy) with half-close
    UNIX_RIGHTS = "unix-rights"  # unix -> unix: recvmsg/sendmsg, SCM_RIGHTS carried through
    STREAM_TO_DATAGRAM = "stream-to-datagram"  # tcp/unix -> udp
    DATAGRAM = "datagram"  # udp -> udp sessions


class HeaderKind(enum.Enum):
    NONE = "none"
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class ListenSpec:
    """One listening socket. ``family`` is AF_INET/AF_INET6/AF_UNIX; ``host`` is what to bind
    (``::`` for a dual-stack wildcard), ``display`` how Go names it in errors."""

    conn_type: ConnType
    family: int
    host: str
    port: int | None
    connect_port: int | None
    display: str
    dual_stack: bool = False
    abstract: bool = False

    @property
    def sockaddr(self) -> tuple[str, int] | str | bytes:
        if self.family == socket.AF_UNIX:
            return b"\0" + self.host[1:].encode() if self.abstract else self.host
        assert self.port is not None
        return (self.host, self.port)


@dataclass(frozen=True)
class TargetSpec:
    """Where to connect: an IP (family + host, ports per listener) or a unix path / @abstract."""

    conn_type: ConnType
    family: int
    host: str
    abstract: bool = False


@dataclass(frozen=True)
class DevicePlan:
    listeners: tuple[ListenSpec, ...]
    target: TargetSpec
    relay: RelayKind
    header: HeaderKind


def plan_device(device: ProxyDevice) -> DevicePlan:
    listen, connect = device.listen, device.connect
    # config/ refused udp -> stream and port counts forkproxy cannot map.
    assert listen.conn_type is not ConnType.UDP or connect.conn_type is ConnType.UDP
    if listen.conn_type is ConnType.UNIX:
        ports: list[tuple[int | None, int | None]] = [(None, device.unix_connect_port)]
    elif connect.conn_type is ConnType.UNIX:
        ports = [(p, None) for p in listen.ports]
    else:
        assert len(device.port_map) == len(listen.ports)
        ports = list(device.port_map)
    listeners = tuple(_listen_spec(listen.conn_type, listen.address, lp, cp, listen.abstract)
                      for lp, cp in ports)

    if connect.conn_type is ConnType.UDP:
        relay = RelayKind.DATAGRAM if listen.conn_type is ConnType.UDP else RelayKind.STREAM_TO_DATAGRAM
    elif listen.conn_type is ConnType.UNIX and connect.conn_type is ConnType.UNIX:
        relay = RelayKind.UNIX_RIGHTS
    else:
        relay = RelayKind.STREAM

    header = HeaderKind.NONE
    if device.proxy_protocol is ProxyProtocol.V1 and connect.conn_type is ConnType.TCP:
        header = HeaderKind.V1  # forkproxy sends v1 only to tcp targets
    elif device.proxy_protocol is ProxyProtocol.V2:
        header = HeaderKind.V2
    return DevicePlan(listeners, _target_spec(connect.conn_type, connect.address, connect.abstract),
                      relay, header)


def _listen_spec(conn_type: ConnType, address: str, port: int | None, connect_port: int | None,
                 abstract: bool) -> ListenSpec:
    if conn_type is ConnType.UNIX:
        return ListenSpec(conn_type, socket.AF_UNIX, address, None, connect_port, address,
                          abstract=abstract)
    assert port is not None
    display = join_host_port(address, port)
    ip = _ip(address)
    if ip is None or ip.is_unspecified:
        # Go listens on the wildcard with one dual-stack IPv6 socket (V6ONLY=0), so
        # tcp:0.0.0.0:80 answers IPv6 clients too, as LXD's forkproxy does.
        return ListenSpec(conn_type, socket.AF_INET6, "::", port, connect_port, display,
                          dual_stack=True)
    family, host = _family_host(ip)
    return ListenSpec(conn_type, family, host, port, connect_port, display)


def _target_spec(conn_type: ConnType, address: str, abstract: bool) -> TargetSpec:
    if conn_type is ConnType.UNIX:
        return TargetSpec(conn_type, socket.AF_UNIX, address, abstract=abstract)
    ip = _ip(address)
    if ip is None or ip.is_unspecified:
        # Dialing the unspecified address reaches the local stack (Go and Linux agree); say so
        # explicitly: the instance's own loopback, inside the connect namespace.
        if isinstance(ip, ipaddress.IPv6Address):
            return TargetSpec(conn_type, socket.AF_INET6, "::1")
        return TargetSpec(conn_type, socket.AF_INET, "127.0.0.1")
    family, host = _family_host(ip)
    return TargetSpec(conn_type, family, host)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as Go sees it (an IPv4-mapped IPv6 literal is IPv4, so ::ffff:0.0.0.0 is
    the IPv4 wildcard); None for the empty host."""
    return to_ipaddress(address) if address else None


def _family_host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, str]:
    if isinstance(ip, ipaddress.IPv6Address):
        return socket.AF_INET6, str(ip)
    return socket.AF_INET, str(ip)


# -- Go's error texts ---------------------------------------------------------------------------

def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def go_strerror(err: int) -> str:
    """Go's syscall.Errno text: glibc's message with a lower-case first letter."""
    text = os.strerror(err)
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def go_addr(spec: ListenSpec) -> str:
    """How Go's *TCPAddr/*UDPAddr/*UnixAddr prints in an OpError: canonical IP, ':port' alone
    for an empty host."""
    if spec.family == socket.AF_UNIX:
        return spec.host
    assert spec.port is not None
    if spec.display.startswith(":"):
        return f":{spec.port}"
    ip = _ip(spec.display.rsplit(":", 1)[0].strip("[]"))
    return join_host_port(str(ip), spec.port)


def listen_error(spec: ListenSpec, exc: BaseException, syscall: str = "bind") -> str:
    """forkproxy's error line for a listener that failed, e.g. ``Failed listening on
    127.0.0.1:1234: listen tcp 127.0.0.1:1234: bind: address already in use``."""
    net = spec.conn_type.value
    if isinstance(exc, OSError) and exc.errno:
        reason = exc.strerror or ""
        if reason == os.strerror(exc.errno):
            reason = go_strerror(exc.errno)
        inner = f"listen {net} {go_addr(spec)}: {syscall}: {reason}"
    else:
        inner = f"listen {net} {go_addr(spec)}: {exc}"
    # forkproxy reports UDP bind failures without its "Failed listening on" prefix.
    if spec.conn_type is ConnType.UDP:
        return inner
    return f"Failed listening on {spec.display}: {inner}"


__all__ = [
    "DevicePlan",
    "HeaderKind",
    "ListenSpec",
    "PlanError",
    "RelayKind",
    "TargetSpec",
    "go_strerror",
    "join_host_port",
    "listen_error",
    "plan_device",
]
