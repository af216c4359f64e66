"""Bridge hairpin mode for NAT devices (LXD's setupNAT br_netfilter branch, spec §3).

With br_netfilter on, a packet an instance sends to the listen IP is DNATed while it is still
being bridged, and the bridge must then send it back out of the port it came in on: that needs
hairpin mode on the instance's bridge port. Without br_netfilter, same-bridge clients can't use
the listen IP at all (their replies bypass netfilter), so LXD only warns and we do the same.

Everything here must run inside the host network namespace (the netns executor's thread):
/proc/sys/net is resolved against the calling thread's netns, and the rtnetlink socket is bound
to the netns of the thread that creates it.
"""

from __future__ import annotations

import logging

from pyroute2 import IPRoute

from lxdproxy.errors import DeviceStartError

log = logging.getLogger(__name__)

_SYSCTL = {4: "bridge-nf-call-iptables", 6: "bridge-nf-call-ip6tables"}


def bridge_netfilter_problem(version: int) -> str | None:
    """None when br_netfilter is on for that IP version, else LXD's reason text."""
    name = _SYSCTL[version]
    try:
        with open(f"/proc/sys/net/bridge/{name}") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return "br_netfilter kernel module not loaded"
    if value != "1":
        return f"sysctl net.bridge.{name} not enabled"
    return None


def enable_hairpin(host_name: str) -> None:
    """``bridge link set dev <host_name> hairpin on``, over rtnetlink."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=host_name)
            if not found:
                raise OSError(f'Link "{host_name}" not found')
            ipr.brport("set", index=found[0], mode=1)  # IFLA_BRPORT_MODE = hairpin
    except OSError as exc:
        raise DeviceStartError(
            f'Error enabling hairpin mode on bridge port "{host_name}": {exc}'
        ) from exc


def setup_hairpin(version: int, nictype: str, host_name: str | None, label: str) -> bool:
    """LXD's br_netfilter/hairpin step; returns True when hairpin mode was switched on."""
    problem = bridge_netfilter_problem(version)
    if problem is not None:
        log.warning(
            "IPv%d bridge netfilter not enabled. Instances using the bridge will not be able to "
            "connect to the proxy listen IP: %s (device %s)", version, problem, label,
        )
        return False
    if nictype != "bridged":
        # LXD runs the hairpin command against a routed NIC's veth too, which is not a bridge
        # port (spec §9.6); routed traffic is L3 and needs no hairpin.
        return False
    if not host_name:
        raise DeviceStartError("Proxy cannot find bridge port host_name to enable hairpin mode")
    enable_hairpin(host_name)
    return True
