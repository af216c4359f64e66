"""NAT repair compares content, not counts (issue 12, failure 5): a DNAT target, a chain
setting or an extra rule changed by hand is put back, by the applier and by the running daemon
within one repair interval, with real traffic reaching the right target again."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab import Lab
from lab.daemon import NFT_TABLE, RunningDaemon
from lab.devices import C1, nat_device
from lab.traffic import roundtrip
from lxdproxy.instances.model import Instance, Nic
from lxdproxy.nat.apply import NatApplier
from lxdproxy.nat.rules import build_nat_ruleset

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


def ruleset(lab: Any) -> str:
    return lab.host.run(["nft", "list", "ruleset"], text=True).stdout


def handle_of(lab: Any, table: str, chain: str, pattern: str) -> str:
    listing = lab.host.run(["nft", "-a", "list", "chain", "inet", table, chain], text=True).stdout
    return re.findall(rf"{pattern} .*# handle (\d+)", listing)[0]


@pytest.mark.parametrize("tamper", [
    ["replace", "rule", "inet", "lxdproxy", "prert.c1.a", "handle", "{h}",
     "ip", "daddr", "198.18.0.1", "tcp", "dport", "80", "counter", "dnat", "ip", "to",
     "203.0.113.9:80"],
    ["insert", "rule", "inet", "lxdproxy", "prert.c1.a", "tcp", "dport", "22", "dnat", "ip",
     "to", "203.0.113.9:22"],
    ["chain", "inet", "lxdproxy", "pstrt.c1.a", "{{", "policy", "drop", ";", "}}"],
], ids=["dnat-target", "extra-rule", "chain-policy"])
def test_applier_puts_back_a_changed_chain(lab: Lab, tamper: list[str]) -> None:
    applier = NatApplier(lab.host.path)
    applier.apply(build_nat_ruleset(nat_device("tcp:198.18.0.1:80", "tcp:0.0.0.0:80"), C1, "a"))
    applier.apply(build_nat_ruleset(nat_device("udp:198.18.0.1:53", "udp:0.0.0.0:53"), C1, "b"))
    good = ruleset(lab)
    assert applier.check_and_repair() == []
    h = handle_of(lab, "lxdproxy", "prert.c1.a", "dnat")
    lab.host.run(["nft", *[part.format(h=h) for part in tamper]])
    assert ruleset(lab) != good
    assert applier.check_and_repair() == ["c1.a"]  # the same number of rules for dnat-target
    assert ruleset(lab) == good
    assert applier.check_and_repair() == []


def test_traffic_moves_the_counters_and_repair_leaves_them(lab: Lab) -> None:
    """Counter values are not content: a repair pass after traffic re-applies nothing (a
    re-apply would zero them), and ``counters()`` reads what the DNAT rules counted."""
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    nic = Nic("eth0", "bridged", inst.ipv4, inst.ipv6, inst.veth_host)
    model = Instance(name="c1", pid=inst.pid, nics=(nic,))
    applier = NatApplier(lab.host.path)
    applier.apply(build_nat_ruleset(nat_device(f"tcp:{HOST}:7400", "tcp:0.0.0.0:9000"),
                                    model, "web"))
    applier.apply(build_nat_ruleset(nat_device(f"tcp:{HOST}:7401", "tcp:0.0.0.0:9000"),
                                    model, "idle"))
    assert applier.counters() == {"c1.web": (0, 0), "c1.idle": (0, 0)}
    for _ in range(3):
        assert roundtrip(client, HOST, 7400) == b"ping"  # prerouting
    assert roundtrip(lab.host, HOST, 7400) == b"ping"  # output
    counted = applier.counters()
    packets, nbytes = counted["c1.web"]
    # A NAT chain sees each flow's first packet only: 4 SYNs, 60 bytes or more each.
    assert packets == 4 and nbytes >= 4 * 60, counted
    assert counted["c1.idle"] == (0, 0)
    assert re.search(r"tcp dport 7400 counter packets [1-9]", ruleset(lab))
    assert applier.check_and_repair() == []
    assert applier.counters() == counted  # not re-applied: nothing was zeroed


def test_daemon_repairs_a_hand_changed_dnat_target_within_one_interval(lab: Any,
                                                                       tmp_path: Path) -> None:
    inst = lab.add_instance()
    decoy = lab.add_instance()
    client_ns = lab.add_client()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    lab.echo(decoy, "tcp", "0.0.0.0", 9001, tag=True)
    interval = 1.0
    daemon = RunningDaemon(lab, tmp_path / "state",
                           ("--nat-repair-interval", str(interval))).start()
    try:
        client = Client(endpoint=str(daemon.socket))
        client.instances.create({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)},
            "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
                        "web": {"type": "proxy", "listen": f"tcp:{HOST}:7400",
                                "connect": "tcp:0.0.0.0:9000", "nat": "true"}},
        }, wait=True)
        good = ruleset(lab)
        assert roundtrip(client_ns, HOST, 7400) == b"ping"
        h = handle_of(lab, NFT_TABLE, "prert.c1.web", "dnat")
        lab.host.run(["nft", "replace", "rule", "inet", NFT_TABLE, "prert.c1.web", "handle", h,
                      "ip", "daddr", HOST, "tcp", "dport", "7400", "counter", "dnat", "ip", "to",
                      f"{decoy.ipv4}:9001"])
        changed_at = time.monotonic()
        assert roundtrip(client_ns, HOST, 7400) == b"9001:ping"  # the hijack works...
        while ruleset(lab) != good and time.monotonic() - changed_at < 3 * interval:
            time.sleep(0.05)
        repaired_after = time.monotonic() - changed_at
        assert ruleset(lab) == good
        assert repaired_after <= interval + 0.5, repaired_after
        assert roundtrip(client_ns, HOST, 7400) == b"ping"  # ...until the next repair pass
        assert "NAT rules of c1.web were changed in table" in daemon.log.read_text()
    finally:
        daemon.stop()
