"""A ``user.lxdproxy.nat_dynamic`` device: up, with its DNAT following the NIC's address.

While the NIC has an address of the device's IP version, the rules point at it; a new address
replaces them in one nftables transaction (no moment without rules, none to the old address
once the new one is known); without one, the rules are removed and the device waits, which the
problem sink shows (a warning, the instance state). Each device follows its own IP version, so
an IPv4 and an IPv6 device of one instance come up independently.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from lxdproxy.config.model import ProxyDevice
from lxdproxy.errors import LxdError
from lxdproxy.instances.address_follow import AddressChanged, AddressFollower, IPAddress
from lxdproxy.instances.model import Instance, Nic
from lxdproxy.nat.runtime import NatRuntime
from lxdproxy.nat.target import NatTarget, ip_version

log = logging.getLogger(__name__)


class AddressSource(Protocol):
    """Where a NIC's current address comes from (the instance backend)."""

    async def follow_address(self, instance: Instance, nic: Nic, version: int,
                             changed: AddressChanged) -> AddressFollower: ...


class AddressWaits(Protocol):
    """Where a device waiting for an address is reported (LXD warnings, warning_registry)."""

    def raise_device_waiting(self, project: str, instance: str, device: str,
                             message: str) -> Any: ...

    def resolve_device_waiting(self, project: str, instance: str, device: str) -> Any: ...


def waiting_message(nic: Nic, version: int) -> str:
    return (f'NAT rules not installed: NIC "{nic.name}" (interface '
            f'"{nic.instance_ifname}") has no IPv{version} address yet '
            "(user.lxdproxy.nat_dynamic)")


class DynamicNatDevice:
    def __init__(self, nat: NatRuntime, waits: AddressWaits, instance: Instance,
                 device_name: str, device: ProxyDevice, nic: Nic) -> None:
        self.nat = nat
        self.waits = waits
        self.instance = instance
        self.device_name = device_name
        self.device = device
        self.nic = nic
        self.version = ip_version(device.listen, device.connect)
        self.target: IPAddress | None = None  # what the installed rules point at
        self._follower: AddressFollower | None = None

    async def start(self, addresses: AddressSource) -> None:
        """Follow the address; install the rules now if there is one. Raises
        DeviceStartError (nothing installed, nothing followed) when they cannot be."""
        self._follower = await addresses.follow_address(self.instance, self.nic, self.version,
                                                        self._changed)
        try:
            await self._point_at(self._follower.current)
        except BaseException:
            await self.close()
            raise

    async def _changed(self, address: IPAddress | None) -> None:
        try:
            await self._point_at(address)
        except LxdError as exc:
            log.error("%s/%s: %s", self.instance.name, self.device_name, exc.message)
            self.waits.raise_device_waiting(
                self.instance.project, self.instance.name, self.device_name,
                f"NAT rules for address {address} could not be installed: {exc.message}")

    async def _point_at(self, address: IPAddress | None) -> None:
        inst, dev = self.instance, self.device_name
        if address is None:
            if self.target is not None:
                await self.nat.remove(inst.name, dev, inst.project)
                log.info("%s/%s: address gone, NAT rules removed", inst.name, dev)
            self.target = None
            self.waits.raise_device_waiting(inst.project, inst.name, dev,
                                            waiting_message(self.nic, self.version))
            return
        await self.nat.apply(inst, dev, self.device, target=NatTarget(address, self.nic))
        if self.target != address:
            log.info("%s/%s: NAT rules point at %s", inst.name, dev, address)
        self.target = address
        self.waits.resolve_device_waiting(inst.project, inst.name, dev)

    async def close(self) -> None:
        """Stop following (the caller removes the rules); the waiting warning is resolved."""
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.close()
        self.waits.resolve_device_waiting(self.instance.project, self.instance.name,
                                          self.device_name)


__all__ = ["AddressSource", "AddressWaits", "DynamicNatDevice", "waiting_message"]
