"""Parsed proxy device configuration: frozen value types, no I/O.

Produced by ``lxdproxy.config.validate_proxy_device``; consumed by forward/, nat/ and api/.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ConnType(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    UNIX = "unix"


class BindSide(enum.Enum):
    HOST = "host"  # listen on the daemon's side, connect inside the instance
    INSTANCE = "instance"  # listen inside the instance, connect on the daemon's side


class InstanceType(enum.Enum):
    CONTAINER = "container"
    VM = "virtual-machine"


@dataclass(frozen=True)
class ProxyAddress:
    """One side of a proxy device, as LXD's ProxyParseAddr returns it.

    ``address`` is stored as written (brackets stripped, not canonicalised): ``""`` is the
    wildcard host, a unix address is the path or ``@name`` for an abstract socket.
    ``ports`` is the expanded list in order (empty for unix).
    """

    conn_type: ConnType
    address: str
    ports: tuple[int, ...] = ()
    abstract: bool = False


class ProxyProtocol(enum.IntEnum):
    NONE = 0
    V1 = 1  # LXD's text header (proxy_protocol=true)
    V2 = 2  # lxdproxy extension: user.lxdproxy.proxy_protocol=v2


@dataclass(frozen=True)
class ProxyDevice:
    """A validated proxy device.

    ``port_map`` is the resolved listen->connect mapping, one pair per listen port in listen
    order (N:N by position, N:1 to the single connect port). It is empty when listen is unix
    (then ``unix_connect_port`` is the single connect port, or None for a unix connect) and when
    connect is unix (then ``listen.ports`` are the ports to listen on).
    """

    listen: ProxyAddress
    connect: ProxyAddress
    bind: BindSide = BindSide.HOST
    nat: bool = False
    proxy_protocol: ProxyProtocol = ProxyProtocol.NONE
    uid: int | None = None
    gid: int | None = None
    mode: int = 0o644
    security_uid: int = 0
    security_gid: int = 0
    port_map: tuple[tuple[int, int], ...] = ()
    nat_wildcard: bool = False  # user.lxdproxy.nat_wildcard=true (Incus-style wildcard NAT)
    # user.lxdproxy.nat_dynamic=true: DNAT to the instance's current address on its NIC
    nat_dynamic: bool = False
    # user.lxdproxy.security.bind_uid/bind_gid: the listening socket is made with these ids
    bind_uid: int | None = None
    bind_gid: int | None = None
    config: tuple[tuple[str, str], ...] = field(default=(), compare=True)  # raw keys, sorted

    @property
    def unix_connect_port(self) -> int | None:
        return self.connect.ports[0] if self.connect.ports else None

    @property
    def drops_bind_ids(self) -> bool:
        """The listen side's sockets are made by a helper running as bind_uid/bind_gid."""
        return self.bind_uid is not None or self.bind_gid is not None

    def raw(self) -> dict[str, str]:
        return dict(self.config)
