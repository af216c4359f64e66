"""``/state`` network shape from iproute2 JSON (pure) against the LXD 5.0.2 capture."""

from __future__ import annotations

import json
from pathlib import Path

from lxdproxy.instances.netstate import lxd_network_from_ip_json

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rest"

IP_JSON = [
    {"ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
     "link_type": "loopback", "address": "00:00:00:00:00:00",
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                   {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"}],
     "stats64": {"rx": {"bytes": 5, "packets": 1, "errors": 0, "dropped": 0},
                 "tx": {"bytes": 5, "packets": 1, "errors": 0, "dropped": 0}}},
    {"ifname": "eth0", "flags": ["BROADCAST", "UP"], "mtu": 1500, "link_type": "ether",
     "address": "00:16:3e:1c:20:a3",
     "addr_info": [{"family": "inet", "local": "10.123.0.10", "prefixlen": 24,
                    "scope": "global"}],
     "stats64": {"rx": {"bytes": 812, "packets": 10, "errors": 0, "dropped": 0},
                 "tx": {"bytes": 1636, "packets": 20, "errors": 0, "dropped": 0}}},
]


def test_network_state_has_lxd_shape() -> None:
    captured = json.loads((FIXTURES / "get-instance-c1-state.json").read_text())
    cap_net = captured["body"]["metadata"]["network"]
    got = lxd_network_from_ip_json(IP_JSON)
    assert set(got) == {"lo", "eth0"}
    for ifname in got:
        assert list(got[ifname]) == list(cap_net[ifname])
        assert list(got[ifname]["counters"]) == list(cap_net[ifname]["counters"])
    assert got["lo"]["addresses"] == cap_net["lo"]["addresses"]
    assert got["lo"]["type"] == "loopback" and got["lo"]["hwaddr"] == ""
    assert got["eth0"]["addresses"][0] == cap_net["eth0"]["addresses"][0]
    assert (got["eth0"]["type"], got["eth0"]["state"], got["eth0"]["hwaddr"]) == (
        "broadcast", "up", "00:16:3e:1c:20:a3")
    assert got["eth0"]["counters"]["bytes_sent"] == 1636
