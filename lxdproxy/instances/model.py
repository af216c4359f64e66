"""What the rest of lxdproxy knows about an instance, whatever backend found it."""

from __future__ import annotations

from dataclasses import dataclass

from lxdproxy.config.model import InstanceType


@dataclass(frozen=True)
class Nic:
    """A NIC from the instance's expanded devices (only what NAT target resolution needs)."""

    name: str
    nictype: str  # resolved: "bridged", "routed", "macvlan", ... ("bridged" for network=<bridge>)
    ipv4_address: str | None = None  # the static ipv4.address key, as written
    ipv6_address: str | None = None
    host_name: str | None = None  # volatile.<nic>.host_name
    interface: str | None = None  # the ``name`` key: the interface inside the instance

    @property
    def instance_ifname(self) -> str:
        """The interface's name inside the instance (LXD: ``name``, else the device name)."""
        return self.interface or self.name


@dataclass(frozen=True)
class Instance:
    """An instance: its namespaces are reached through ``pid`` (init PID) or ``netns``.

    ``netns`` is a named netns (``/run/netns/<name>``) or an nsfs path; such an instance
    shares the daemon's mount and user namespaces.
    """

    name: str
    type: InstanceType = InstanceType.CONTAINER
    status: str = "Running"
    pid: int | None = None
    netns: str | None = None
    nics: tuple[Nic, ...] = ()
    project: str = "default"

    @property
    def running(self) -> bool:
        return self.status == "Running"


Devices = dict[str, dict[str, str]]


@dataclass(frozen=True)
class InstanceUpdate:
    """An instance's writable state as a write leaves it (LXD's InstancePut minus the actions):
    what the device manager validates and a backend persists."""

    config: dict[str, str]
    devices: Devices
    description: str = ""
