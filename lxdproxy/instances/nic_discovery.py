"""Find a NIC's host-side veth name (LXD's ``volatile.<nic>.host_name``) from the kernel.

LXD knows the name because it created the veth. Instances registered with the local backend were
wired by someone else, so when NAT needs the bridge port (hairpin mode) and no
``volatile.<nic>.host_name`` was given, we ask the kernel: the instance's interface carries its
peer's ifindex (IFLA_LINK), and the host-side interface with that index must point back at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from lxdproxy.instances.model import Instance
from lxdproxy.instances.namespaces import instance_namespaces
from lxdproxy.netns import netns_executor

log = logging.getLogger(__name__)


def _links(net_path: str | None) -> dict[int, tuple[str, int | None]]:
    """ifindex -> (name, IFLA_LINK) of every link in that netns."""
    from pyroute2 import IPRoute  # bound to the netns of the thread that creates it

    def read() -> dict[int, tuple[str, int | None]]:
        with IPRoute() as ipr:
            return {link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_LINK"))
                    for link in ipr.get_links()}

    return netns_executor(net_path).call(read)


def _discover(instance: Instance, host_net: str | None) -> Instance:
    missing = [nic for nic in instance.nics if not nic.host_name]
    if not missing:
        return instance
    inside = _links(instance_namespaces(instance).net)
    host = _links(host_net)
    names: dict[str, str] = {}
    for index, (name, peer) in inside.items():
        if peer and peer in host and host[peer][1] == index:
            names[name] = host[peer][0]
    nics = tuple(dataclasses.replace(nic, host_name=names.get(nic.name)) if not nic.host_name else nic
                 for nic in instance.nics)
    return dataclasses.replace(instance, nics=nics)


async def with_host_names(instance: Instance, host_net: str | None) -> Instance:
    """The instance with ``host_name`` filled in for NICs that lack it, where the kernel knows."""
    if all(nic.host_name for nic in instance.nics) or not (instance.pid or instance.netns):
        return instance
    try:
        # A worker thread: pyroute2 drives an asyncio loop of its own.
        return await asyncio.to_thread(_discover, instance, host_net)
    except (OSError, ProcessLookupError) as exc:
        log.warning("cannot discover host-side NIC names of %s: %s", instance.name, exc)
        return instance

