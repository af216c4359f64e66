"""NAT devices through the real daemon: the instance reaches itself via the listen IP (hairpin,
with the bridge port discovered from the kernel), rules come back after `nft flush ruleset`, and
removal leaves the ruleset as it was."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab.daemon import NFT_TABLE, RunningDaemon
from lab.traffic import eventually_roundtrip, roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


def chains(lab: Any) -> str:
    return lab.host.run(["nft", "list", "ruleset"]).stdout.decode()


def test_nat_device_hairpin_repair_and_cleanup(lab: Any, tmp_path: Path) -> None:
    inst = lab.add_instance()
    client_ns = lab.add_client()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    before = chains(lab)
    daemon = RunningDaemon(lab, tmp_path / "state", ("--nat-repair-interval", "0.3")).start()
    try:
        client = Client(endpoint=str(daemon.socket))
        client.instances.create({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)},  # no volatile.eth0.host_name given
            "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4}},
        }, wait=True)
        c1 = client.instances.get("c1")
        c1.devices["web"] = {"type": "proxy", "listen": f"tcp:{HOST}:7400",
                             "connect": "tcp:0.0.0.0:9000", "nat": "true"}
        c1.save(wait=True)
        rules = chains(lab)
        assert "chain prert.c1.web" in rules
        assert f"ip daddr {HOST} tcp dport 7400 counter packets 0 bytes 0 dnat ip to {inst.ipv4}:9000" in rules
        # A routed client and the instance itself (hairpin through its own bridge port).
        assert roundtrip(client_ns, HOST, 7400) == b"ping"
        assert roundtrip(inst, HOST, 7400) == b"ping"
        hairpin = lab.host.run(["bridge", "-d", "link", "show", "dev", inst.veth_host]).stdout
        assert b"hairpin on" in hairpin

        lab.host.run(["nft", "flush", "ruleset"])
        assert "prert.c1.web" not in chains(lab)
        deadline = time.monotonic() + 10
        while "prert.c1.web" not in chains(lab) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"ip daddr {HOST} tcp dport 7400 counter packets 0 bytes 0 dnat ip to {inst.ipv4}:9000" in chains(lab)
        assert eventually_roundtrip(client_ns, HOST, 7400) == b"ping"

        del c1.devices["web"]
        c1.save(wait=True)
        assert chains(lab) == before
        assert NFT_TABLE not in chains(lab)
    finally:
        daemon.stop()
