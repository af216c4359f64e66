"""Forget conntrack state of a NAT device's UDP flows (netlink, via pyroute2).

NAT is decided on a flow's first packet and then cached in conntrack. A UDP "flow" lives as long
as packets keep coming, so without this a client that sent before the rules existed keeps
bypassing them, and one that sent while they existed keeps reaching the instance after removal.
LXD doesn't do this; established TCP connections are left alone (as in LXD) so removing a device
doesn't cut live sessions.

Must be called inside the target network namespace (the netns executor's thread): the
NFCTSocket is bound to the netns of the thread that creates it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple


@dataclass(frozen=True)
class UdpFlowMatch:
    """Original-direction UDP flows to ``daddr`` (None: any address) on one of ``ports``."""

    version: int
    daddr: str | None
    ports: frozenset[int]


def flush_udp_flows(matches: Iterable[UdpFlowMatch]) -> int:
    """Delete matching conntrack entries; returns how many were deleted."""
    wanted = [m for m in matches if m.ports]
    if not wanted:
        return 0
    deleted = 0
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        mine = [m for m in wanted if m.version == version]
        if not mine:
            continue
        # ctnetlink requests carry the address family in the message header, not the tuple.
        with Conntrack(nfgen_family=family) as ct:
            udp = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)
            for entry in list(ct.dump_entries(tuple_orig=udp)):
                orig = entry.tuple_orig
                if not any(_matches(m, orig.daddr, orig.dport) for m in mine):
                    continue
                try:
                    ct.delete(entry)
                    deleted += 1
                except OSError:
                    pass  # already gone (timed out or deleted concurrently)
    return deleted


def _matches(m: UdpFlowMatch, daddr: str | None, dport: int | None) -> bool:
    if dport not in m.ports:
        return False
    if m.daddr is None:
        return True
    try:
        return daddr is not None and ipaddress.ip_address(daddr) == ipaddress.ip_address(m.daddr)
    except ValueError:
        return False
