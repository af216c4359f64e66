"""NatApplier in a lab netns: LXD's exact `nft list` text, clean removal, hostile names, repair."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lab import Lab
from lab.devices import C1, apply_device, instance, nat_device, remove_device
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.model import Nic
from lxdproxy.nat.apply import NatApplier
from lxdproxy.nat.rules import Hook, build_nat_ruleset

pytestmark = pytest.mark.lab

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nft"

LXD_DEVICES = [
    ("ref-nat-tcp", "tcp:192.0.2.2:7009", "tcp:10.123.0.10:8009"),
    ("ref-nat-udp-range", "udp:10.123.0.1:7500-7501", "udp:10.123.0.10:8500-8501"),
    ("ref-nat-many1", "tcp:192.0.2.2:7600-7601", "tcp:10.123.0.10:8600"),
]

# Routed NICs need no bridge hairpin, so these tests can use addresses nobody owns.
ROUTED = instance(Nic("eth0", "routed", "10.123.0.10", "fd42::10"))

UNRELATED = """table ip filter {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 22 counter packets 0 bytes 0 accept
	}
}
table inet lxdproxyx {
	set s {
		type ipv4_addr
	}
}
"""


def ruleset(lab: Lab) -> str:
    return lab.host.run(["nft", "list", "ruleset"], text=True).stdout


def load(lab: Lab, text: str) -> None:
    lab.host.run(["nft", "-f", "-"], input=text, text=True)


def test_lxd_table_text_is_byte_identical_to_lxd(lab: Lab) -> None:
    load(lab, (FIXTURES / "nft-before-nat.txt").read_text())
    assert ruleset(lab) == (FIXTURES / "nft-before-nat.txt").read_text()
    applier = NatApplier(lab.host.path, table="lxd")
    for name, listen, connect in LXD_DEVICES:
        applier.apply(build_nat_ruleset(nat_device(listen, connect), C1, name, table="lxd"))
        if name == "ref-nat-tcp":
            assert ruleset(lab) == (FIXTURES / "nft-after-nat-tcp.txt").read_text()
        if name == "ref-nat-udp-range":
            assert ruleset(lab) == (FIXTURES / "nft-after-nat-udp.txt").read_text()
    assert ruleset(lab) == (FIXTURES / "nft-after-nat-many1.txt").read_text()
    assert applier.list_labels() == [f"c1.{d[0]}" for d in sorted(LXD_DEVICES)]
    for name, _listen, _connect in LXD_DEVICES:
        assert applier.remove(f"c1.{name}")
    # LXD's table stays (it isn't ours), with exactly its own chains.
    assert ruleset(lab) == (FIXTURES / "nft-after-cleanup.txt").read_text()


def test_ipv6_chain_text_as_lxd_test_suite_greps(lab: Lab) -> None:
    inst = instance(Nic("eth0", "bridged", "192.0.2.10", "2001:db8::100"), name="nattest")
    rs = build_nat_ruleset(nat_device("tcp:[::1]:1234", "tcp:[2001:db8::100]:1234"), inst,
                           "validNAT", table="lxd")
    NatApplier(lab.host.path, table="lxd").apply(rs)
    out = lab.host.run(["nft", "list", "chain", "inet", "lxd", "prert.nattest.validNAT"],
                       text=True).stdout
    assert out == (
        "table inet lxd {\n"
        "\tchain prert.nattest.validNAT {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tip6 daddr ::1 tcp dport 1234 dnat ip6 to [2001:db8::100]:1234\n"
        "\t}\n"
        "}\n"
    )
    for hook in Hook:  # our rule text is what nft lists
        chain = rs.chain(hook)
        listed = lab.host.run(["nft", "list", "chain", "inet", "lxd", chain], text=True).stdout
        for line in rs.rule_texts(hook):
            assert f"\t\t{line}\n" in listed


@pytest.mark.parametrize("preexisting", ["", UNRELATED])
async def test_removal_restores_ruleset_byte_for_byte(lab: Lab, preexisting: str) -> None:
    if preexisting:
        load(lab, preexisting)
    before = ruleset(lab)
    inst = instance(Nic("eth0", "routed", "198.18.0.50", "fd42::50", None))
    await apply_device(inst, "web", nat_device("tcp:198.18.0.1:80-82", "tcp:0.0.0.0:8080"),
                       net_path=lab.host.path)
    await apply_device(inst, "dns", nat_device("udp:[fd42::1]:53", "udp:[::]:5353"),
                       net_path=lab.host.path)
    during = ruleset(lab)
    assert "table inet lxdproxy {" in during and "chain prert.c1.dns {" in during
    assert await remove_device("c1", "web", net_path=lab.host.path)
    assert "c1.web" not in ruleset(lab) and "chain out.c1.dns {" in ruleset(lab)
    assert await remove_device("c1", "dns", net_path=lab.host.path)
    assert ruleset(lab) == before
    assert not await remove_device("c1", "dns", net_path=lab.host.path)  # idempotent
    assert ruleset(lab) == before


def test_reapply_is_idempotent_and_replaces_rules(lab: Lab) -> None:
    applier = NatApplier(lab.host.path)
    rs = build_nat_ruleset(nat_device("tcp:198.18.0.1:80", "tcp:10.123.0.10:80"), C1, "d")
    applier.apply(rs)
    once = ruleset(lab)
    applier.apply(rs)
    assert ruleset(lab) == once
    rs2 = build_nat_ruleset(nat_device("tcp:198.18.0.1:81", "tcp:10.123.0.10:80"), C1, "d")
    applier.apply(rs2)
    assert "dport 81 " in ruleset(lab) and "dport 80 dnat" not in ruleset(lab)


@pytest.mark.parametrize(
    "bad",
    ['x" ; flush ruleset ; "', "a b", "a;b", "a}b", "a\nflush ruleset", "x" * 300, "d{"],
)
async def test_hostile_names_are_rejected_and_change_nothing(lab: Lab, bad: str) -> None:
    load(lab, UNRELATED)
    await apply_device(ROUTED, "ok", nat_device("tcp:198.18.0.1:80", "tcp:0.0.0.0:80"),
                       net_path=lab.host.path)
    before = ruleset(lab)
    bad_inst = instance(Nic("eth0", "routed", "10.123.0.10"), name=bad)
    for inst, dev in ((ROUTED, bad), (bad_inst, "d")):
        with pytest.raises(DeviceStartError, match="^Cannot use NAT for instance device "):
            await apply_device(inst, dev, nat_device("tcp:198.18.0.1:81", "tcp:0.0.0.0:81"),
                               net_path=lab.host.path)
        await remove_device(inst.name, dev, net_path=lab.host.path)
    assert ruleset(lab) == before


def test_longest_name_applies(lab: Lab) -> None:
    applier = NatApplier(lab.host.path)
    name = "d" * (249 - len("c1."))
    applier.apply(build_nat_ruleset(nat_device("tcp:198.18.0.1:80", "tcp:0.0.0.0:80"), C1, name))
    assert applier.list_labels() == [f"c1.{name}"]
    assert applier.remove(f"c1.{name}")
    assert ruleset(lab) == ""


def test_check_and_repair_after_flush_ruleset(lab: Lab) -> None:
    applier = NatApplier(lab.host.path)
    applier.apply(build_nat_ruleset(nat_device("tcp:198.18.0.1:80", "tcp:0.0.0.0:80"), C1, "a"))
    applier.apply(build_nat_ruleset(nat_device("udp:198.18.0.1:53", "udp:0.0.0.0:53"), C1, "b"))
    good = ruleset(lab)
    assert applier.check_and_repair() == []
    lab.host.run(["nft", "flush", "ruleset"])
    assert applier.check_and_repair() == ["c1.a", "c1.b"]
    assert ruleset(lab) == good
    # one rule deleted by hand -> that device only
    handle = subprocess.run(
        ["ip", "netns", "exec", lab.host.name, "nft", "-a", "list", "chain", "inet", "lxdproxy",
         "out.c1.b"], capture_output=True, text=True, check=True).stdout
    h = re.findall(r"dnat .* # handle (\d+)", handle)[0]
    lab.host.run(["nft", "delete", "rule", "inet", "lxdproxy", "out.c1.b", "handle", h])
    assert applier.check_and_repair() == ["c1.b"]
    assert ruleset(lab) == good
    applier.remove("c1.a")
    lab.host.run(["nft", "flush", "ruleset"])
    assert applier.check_and_repair() == ["c1.b"]  # a removed device is not brought back


INLINE_SCRIPT = """
import asyncio
from lxdproxy.nat.apply import NatApplier
from lxdproxy.nat.rules import build_nat_ruleset
from lab.devices import instance, nat_device
from lxdproxy.instances.model import Nic

async def main():
    # The daemon's own netns (inline executor), called straight from the event loop's thread,
    # as DeviceRuntime does: conntrack (pyroute2) must not trip over the running loop.
    inst = instance(Nic("eth0", "routed", "10.123.0.10"))
    applier = NatApplier(None)
    applier.apply(build_nat_ruleset(nat_device("udp:198.18.0.1:53", "udp:0.0.0.0:53"), inst, "d"))
    print(applier.list_labels())
    assert applier.remove("c1.d")

asyncio.run(main())
"""


def test_sync_calls_from_an_event_loop_in_the_own_netns(lab: Lab) -> None:
    import sys

    out = lab.host.run([sys.executable, "-c", INLINE_SCRIPT], text=True,
                       cwd=str(FIXTURES.parents[1]))
    assert out.stdout == "['c1.d']\n"
    assert ruleset(lab) == ""
