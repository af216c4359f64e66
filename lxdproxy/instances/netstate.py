"""The ``network`` part of ``GET /1.0/instances/<n>/state``, read from a network namespace.

We run ``ip -j -s addr show`` under ``nsenter --net=<nsfs path>`` (a short-lived child process, so
no thread of the daemon changes namespace) and reshape it the way LXD reports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("lxdproxy.instances.netstate")

# iproute2 scope names -> LXD's ("host" is what LXD calls "local", see the lo entry it returns).
_SCOPES = {"host": "local", "global": "global", "link": "link", "site": "site"}


def lxd_network_from_ip_json(links: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: iproute2 JSON (``ip -j -s addr``) -> LXD's state ``network`` map."""
    out: dict[str, Any] = {}
    for link in links:
        stats = link.get("stats64", {})
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        loopback = link.get("link_type") == "loopback"
        out[link["ifname"]] = {
            "addresses": [
                {
                    "family": a.get("family", ""),
                    "address": a.get("local", ""),
                    "netmask": str(a.get("prefixlen", "")),
                    "scope": _SCOPES.get(a.get("scope", ""), a.get("scope", "")),
                }
                for a in link.get("addr_info", [])
                if a.get("family") in ("inet", "inet6")
            ],
            "counters": {
                "bytes_received": rx.get("bytes", 0),
                "bytes_sent": tx.get("bytes", 0),
                "packets_received": rx.get("packets", 0),
                "packets_sent": tx.get("packets", 0),
                "errors_received": rx.get("errors", 0),
                "errors_sent": tx.get("errors", 0),
                "packets_dropped_outbound": tx.get("dropped", 0),
                "packets_dropped_inbound": rx.get("dropped", 0),
            },
            "hwaddr": "" if loopback else link.get("address", ""),
            "host_name": "",
            "mtu": link.get("mtu", 0),
            "state": "up" if "UP" in link.get("flags", []) else "down",
            "type": "loopback" if loopback else "broadcast",
        }
    return out


async def read_network_state(net_path: str, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={net_path}", "ip", "-j", "-s", "addr", "show",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError) as exc:
        log.warning("reading network state of %s failed: %s", net_path, exc)
        return None
    if proc.returncode != 0:
        log.warning("reading network state of %s failed: %s", net_path,
                    err.decode(errors="replace").strip())
        return None
    return lxd_network_from_ip_json(json.loads(out or b"[]"))
