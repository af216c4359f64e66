"""ProxyDevice and Instance values from short strings, for tests and benchmarks.

``proxy`` goes through the one validation gate (LXD-style keys); ``nat_device`` builds the value
directly, so NAT code can be fed devices the gate would refuse."""

from __future__ import annotations

from collections.abc import Mapping

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.model import BindSide, ConnType, InstanceType, ProxyAddress, ProxyDevice
from lxdproxy.instances.model import Instance, Nic
from lxdproxy.nat.rules import DEFAULT_TABLE, NatRuleSet
from lxdproxy.nat.runtime import NatRuntime


def proxy(**config: str) -> ProxyDevice:
    """A device from LXD-style keys; ``security_uid`` stands for ``security.uid``."""
    raw: Mapping[str, str] = {k.replace("security_", "security."): v for k, v in config.items()}
    return validate_proxy_device({"type": "proxy", **raw})


def addr(text: str) -> ProxyAddress:
    """`tcp:1.2.3.4:80-81,90` / `udp:[::1]:53` -> ProxyAddress (well-formed input only)."""
    kind, rest = text.split(":", 1)
    host, _, ports_text = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    ports: list[int] = []
    for item in ports_text.split(","):
        start, _, end = item.partition("-")
        ports += range(int(start), int(end or start) + 1)
    return ProxyAddress(ConnType(kind), host, tuple(ports))


def nat_device(listen: str, connect: str, *, nat_wildcard: bool = False) -> ProxyDevice:
    lst, con = addr(listen), addr(connect)
    return ProxyDevice(
        listen=lst,
        connect=con,
        bind=BindSide.HOST,
        nat=True,
        nat_wildcard=nat_wildcard,
        port_map=tuple(
            (p, con.ports[i] if len(con.ports) > 1 else con.ports[0])
            for i, p in enumerate(lst.ports)
            if len(con.ports) in (1, len(lst.ports))
        ),
    )


def instance(
    *nics: Nic, name: str = "c1", project: str = "default", vm: bool = False
) -> Instance:
    return Instance(
        name=name,
        type=InstanceType.VM if vm else InstanceType.CONTAINER,
        nics=nics,
        project=project,
    )


C1 = instance(Nic("eth0", "bridged", "10.123.0.10", "fd42::10", "veth1234"))


async def apply_device(inst: Instance, device_name: str, device: ProxyDevice, *,
                       net_path: str | None = None, table: str = DEFAULT_TABLE) -> NatRuleSet:
    """Start a NAT device in ``net_path`` (a lab netns) as the daemon's NatRuntime does."""
    return await NatRuntime(net_path=net_path, table=table).apply(inst, device_name, device)


async def remove_device(instance_name: str, device_name: str, *, project: str = "default",
                        net_path: str | None = None, table: str = DEFAULT_TABLE) -> bool:
    return await NatRuntime(net_path=net_path, table=table).remove(instance_name, device_name,
                                                                   project)
