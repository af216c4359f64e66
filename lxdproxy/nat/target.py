"""NAT target resolution: which instance address the DNAT rules point at (LXD's setupNAT, pure).

LXD only DNATs to a *static* address of one of the instance's bridged/routed NICs, so a proxy
device can never redirect traffic to somebody else's address.

Deliberate differences from LXD (documented in docs/compatibility.md):
- NICs are tried in name order (LXD walks a Go map: random when several NICs match).
- The connect IP is compared as an IP, not as a string (spec §9.3): ``2001:0db8::100`` matches a
  NIC whose ``ipv6.address`` is ``2001:db8::100``; ``0:0::0`` is a wildcard like ``::``.
- An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is treated as the IPv4 address it maps,
  consistently (LXD picks the family by "contains a colon" here and by "has a 4-byte form" in its
  validator and firewall driver, spec §9.8).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lxdproxy.config.gonet import to_ipaddress
from lxdproxy.config.model import ProxyAddress, ProxyDevice
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.model import Instance, Nic

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# LXD only accepts NICs whose traffic passes through the host's routing.
NAT_NICTYPES = frozenset({"bridged", "routed"})


@dataclass(frozen=True)
class NatTarget:
    """The instance address the rules DNAT to, and the NIC it belongs to."""

    address: IPAddress
    nic: Nic

    @property
    def version(self) -> int:
        return self.address.version


def parse_ip(text: str) -> IPAddress | None:
    """An IP as Go's net.ParseIP takes it (no zone, no prefix), IPv4-mapped folded to IPv4."""
    return to_ipaddress(text)


def ip_version(address: ProxyAddress, other: ProxyAddress | None = None) -> int:
    """The IP version of a NAT listen address.

    LXD uses "contains a colon" (spec §3); we use the parsed address so IPv4-mapped addresses
    count as IPv4. An empty host (``tcp::80``) has no version of its own: take ``other``'s
    (the connect address), else 4 (what LXD's colon test gives for ``""``).
    """
    ip = parse_ip(address.address)
    if ip is not None:
        return ip.version
    if other is not None:
        ip = parse_ip(other.address)
        if ip is not None:
            return ip.version
    return 6 if ":" in address.address else 4


def is_wildcard(address: ProxyAddress) -> bool:
    """``0.0.0.0``, ``::`` (any spelling) or the empty host of ``tcp::80``."""
    if address.address == "":
        return True
    ip = parse_ip(address.address)
    return ip is not None and ip.is_unspecified


def _nic_address(nic: Nic, version: int) -> IPAddress | None:
    text = nic.ipv4_address if version == 4 else nic.ipv6_address
    if not text:
        return None
    ip = parse_ip(text)
    if ip is None or ip.version != version:
        return None  # LXD: net.ParseIP fails -> no match, try the next NIC
    return ip


def dynamic_nat_nic(device: ProxyDevice, instance: Instance) -> Nic | None:
    """``user.lxdproxy.nat_dynamic``: the NIC whose current address is the target, chosen as
    Incus does (PR 3528): a static address of the device's IP version on a bridged/routed NIC
    still wins (None: resolve it as LXD does); otherwise the first bridged NIC without a static
    address of that version (in name order: Incus walks a Go map). A routed NIC has no DHCP to
    follow. Raises DeviceStartError when no NIC qualifies."""
    version = ip_version(device.listen, device.connect)
    candidates = sorted((n for n in instance.nics if n.nictype in NAT_NICTYPES),
                        key=lambda n: n.name)
    if any(_nic_address(nic, version) is not None for nic in candidates):
        return None
    for nic in candidates:
        if nic.nictype == "bridged":
            return nic
    raise DeviceStartError(
        f"Instance has no static IPv{version} address and no bridged NIC whose address "
        "user.lxdproxy.nat_dynamic could follow"
    )


def resolve_nat_target(device: ProxyDevice, instance: Instance) -> NatTarget:
    """Pick the instance address the NAT rules point at, or raise LXD's start error.

    Works the same for containers and VMs: only the NIC config matters.
    """
    version = ip_version(device.listen, device.connect)
    connect = device.connect.address
    connect_ip = parse_ip(connect)
    # LXD tests the literal strings "0.0.0.0"/"::"; any unspecified spelling counts here. An
    # empty connect host is *not* a wildcard for LXD (it fails with `Connect IP ""`), keep that.
    wildcard = connect_ip is not None and connect_ip.is_unspecified

    for nic in sorted(instance.nics, key=lambda n: n.name):
        if nic.nictype not in NAT_NICTYPES:
            continue
        nic_ip = _nic_address(nic, version)
        if nic_ip is None:
            continue
        if wildcard or nic_ip == connect_ip:
            return NatTarget(address=nic_ip, nic=nic)

    if wildcard:
        raise DeviceStartError(
            f"Instance has no static IPv{version} address assigned to be used as the connect IP"
        )
    raise DeviceStartError(
        f'Connect IP "{connect}" must be one of the instance\'s static IPv{version} addresses'
    )
