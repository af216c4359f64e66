"""NAT rule building: text against LXD 5.0.2's captured `nft list ruleset`, JSON shape, names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab.devices import C1, instance, nat_device
from lxdproxy.config import validate_proxy_device
from lxdproxy.errors import ConfigError, DeviceStartError
from lxdproxy.instances.model import Nic
from lxdproxy.nat.rules import Hook, build_nat_ruleset, device_label

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nft"


def fixture_chains(name: str) -> dict[str, list[str]]:
    """chain name -> its lines (after the `type ...` line) from an `nft list ruleset` capture."""
    chains: dict[str, list[str]] = {}
    text = (FIXTURES / name).read_text()
    for m in re.finditer(r"\tchain (\S+) \{\n(.*?)\n\t\}", text, re.S):
        chains[m.group(1)] = [ln.strip() for ln in m.group(2).splitlines()]
    return chains


def rule_lines(rs, hook: Hook) -> list[str]:
    prio = {"prerouting": "dstnat", "output": "-100", "postrouting": "srcnat"}[hook.hook]
    head = f"type nat hook {hook.hook} priority {prio}; policy accept;"
    return [head, *rs.rule_texts(hook)]


@pytest.mark.parametrize(
    ("device", "listen", "connect"),
    [
        ("ref-nat-tcp", "tcp:192.0.2.2:7009", "tcp:10.123.0.10:8009"),
        ("ref-nat-udp-range", "udp:10.123.0.1:7500-7501", "udp:10.123.0.10:8500-8501"),
        ("ref-nat-many1", "tcp:192.0.2.2:7600-7601", "tcp:10.123.0.10:8600"),
    ],
)
def test_rule_text_equals_lxd_capture(device: str, listen: str, connect: str) -> None:
    chains = fixture_chains("nft-after-nat-many1.txt")
    rs = build_nat_ruleset(nat_device(listen, connect), C1, device, table="lxd")
    for hook in Hook:
        assert rule_lines(rs, hook) == chains[f"{hook.prefix}.c1.{device}"]


def test_lxd_test_suite_greps() -> None:
    # The exact lines LXD's container_devices_proxy.sh greps for (spec §5.1).
    inst = instance(Nic("eth0", "bridged", "192.0.2.10", "2001:db8::100"), name="nattest")
    rs = build_nat_ruleset(nat_device("tcp:127.0.0.1:1234", "tcp:192.0.2.10:1234"), inst, "d", table="lxd")
    assert rs.rule_texts(Hook.PREROUTING) == (
        "ip daddr 127.0.0.1 tcp dport 1234 dnat ip to 192.0.2.10:1234",
    )
    rs = build_nat_ruleset(nat_device("tcp:127.0.0.1:1234-1235", "tcp:192.0.2.10:1234-1235"),
                           inst, "d", table="lxd")
    assert rs.rule_texts(Hook.OUTPUT) == (
        "ip daddr 127.0.0.1 tcp dport 1234-1235 dnat ip to 192.0.2.10",
    )
    rs = build_nat_ruleset(nat_device("tcp:[::1]:1234", "tcp:[2001:db8::100]:1234"), inst, "d", table="lxd")
    assert rs.rule_texts(Hook.PREROUTING) == (
        "ip6 daddr ::1 tcp dport 1234 dnat ip6 to [2001:db8::100]:1234",
    )
    assert rs.rule_texts(Hook.POSTROUTING) == (
        "ip6 saddr 2001:db8::100 ip6 daddr 2001:db8::100 tcp dport 1234 masquerade",
    )


def test_one_masquerade_per_contiguous_target_range() -> None:
    rs = build_nat_ruleset(
        nat_device("tcp:192.0.2.2:80-83,200-203", "tcp:10.123.0.10:80,81,110,120,200-203"),
        C1, "web")
    assert [r.split(" dport ")[1] for r in rs.rule_texts(Hook.POSTROUTING)] == [
        "80-81 masquerade", "110 masquerade", "120 masquerade", "200-203 masquerade",
    ]
    assert rs.rule_texts(Hook.PREROUTING) == rs.rule_texts(Hook.OUTPUT)


def test_listen_address_printed_canonically() -> None:
    rs = build_nat_ruleset(nat_device("tcp:[2001:0db8::0001]:80", "tcp:[::]:80"), C1, "d")
    assert rs.rule_texts(Hook.PREROUTING)[0].startswith("ip6 daddr 2001:db8::1 tcp dport 80 ")


def test_labels_and_default_table() -> None:
    rs = build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), C1, "web")
    assert rs.table == "lxdproxy"
    assert rs.chains == ("prert.c1.web", "out.c1.web", "pstrt.c1.web")
    assert device_label("c1", "web", "proj") == "proj_c1.web"
    other = instance(Nic("eth0", "bridged", "10.0.0.2"), name="c2", project="proj")
    assert build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), other,
                             "web").label == "proj_c2.web"


def test_to_json_is_one_transaction() -> None:
    rs = build_nat_ruleset(nat_device("tcp:192.0.2.2:7600-7601", "tcp:10.123.0.10:8600"), C1,
                           "m")
    cmds = rs.to_json()["nftables"]
    verbs = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in cmds]
    assert verbs == [("add", "table")] + [("add", "chain")] * 3 + [("flush", "chain")] * 3 + [
        ("add", "rule")] * 3
    assert cmds[1]["add"]["chain"] == {
        "family": "inet", "table": "lxdproxy", "name": "prert.c1.m", "type": "nat",
        "hook": "prerouting", "prio": -100, "policy": "accept"}
    assert cmds[3]["add"]["chain"]["prio"] == 100
    assert cmds[7]["add"]["rule"]["expr"] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": "192.0.2.2"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"range": [7600, 7601]}}},
        {"counter": None},
        {"dnat": {"family": "ip", "addr": "10.123.0.10", "port": 8600}},
    ]
    json.dumps(rs.to_json())  # serialisable


def test_counters_on_dnat_rules_except_in_lxds_table() -> None:
    device = nat_device("tcp:192.0.2.2:7009", "tcp:10.123.0.10:8009")
    ours, lxds = build_nat_ruleset(device, C1, "t"), build_nat_ruleset(device, C1, "t", table="lxd")
    assert ours.counters and not lxds.counters
    for hook in (Hook.PREROUTING, Hook.OUTPUT):
        assert {"counter": None} in ours.rule_exprs(hook)[0]
        assert {"counter": None} not in lxds.rule_exprs(hook)[0]
        assert ours.rule_texts(hook) == tuple(
            t.replace(" dnat", " counter packets 0 bytes 0 dnat") for t in lxds.rule_texts(hook))
    assert ours.rule_texts(Hook.POSTROUTING) == lxds.rule_texts(Hook.POSTROUTING)
    assert "counter" not in lxds.to_text()


def test_identical_range_dnat_has_no_port() -> None:
    rs = build_nat_ruleset(nat_device("udp:192.0.2.2:80-81", "udp:10.123.0.10:80-81"), C1, "d")
    dnat = rs.to_json()["nftables"][7]["add"]["rule"]["expr"][-1]
    assert dnat == {"dnat": {"family": "ip", "addr": "10.123.0.10"}}


def test_to_text_script() -> None:
    rs = build_nat_ruleset(nat_device("tcp:192.0.2.2:7009", "tcp:10.123.0.10:8009"), C1, "t")
    assert rs.to_text() == (
        "add table inet lxdproxy\n"
        "add chain inet lxdproxy prert.c1.t { type nat hook prerouting priority -100; policy accept; }\n"  # noqa: E501
        "add chain inet lxdproxy out.c1.t { type nat hook output priority -100; policy accept; }\n"
        "add chain inet lxdproxy pstrt.c1.t { type nat hook postrouting priority 100; policy accept; }\n"  # noqa: E501
        "flush chain inet lxdproxy prert.c1.t\n"
        "flush chain inet lxdproxy out.c1.t\n"
        "flush chain inet lxdproxy pstrt.c1.t\n"
        "add rule inet lxdproxy prert.c1.t ip daddr 192.0.2.2 tcp dport 7009 counter packets 0 bytes 0 dnat ip to 10.123.0.10:8009\n"  # noqa: E501
        "add rule inet lxdproxy out.c1.t ip daddr 192.0.2.2 tcp dport 7009 counter packets 0 bytes 0 dnat ip to 10.123.0.10:8009\n"  # noqa: E501
        "add rule inet lxdproxy pstrt.c1.t ip saddr 10.123.0.10 ip daddr 10.123.0.10 tcp dport 8009 masquerade\n"  # noqa: E501
    )


def test_wildcard_listen_incus_style() -> None:
    rs = build_nat_ruleset(nat_device("tcp:0.0.0.0:80", "tcp:0.0.0.0:8080", nat_wildcard=True),
                           C1, "w")
    assert rs.listen_ip is None
    assert rs.rule_texts(Hook.PREROUTING) == (
        "meta nfproto ipv4 fib daddr type local tcp dport 80 counter packets 0 bytes 0 dnat ip to 10.123.0.10:8080",)
    assert rs.rule_texts(Hook.OUTPUT) == (
        "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 80 "
        "counter packets 0 bytes 0 dnat ip to 10.123.0.10:8080",)
    rs6 = build_nat_ruleset(nat_device("udp:[::]:53", "udp:[::]:53", nat_wildcard=True), C1, "w")
    assert rs6.rule_texts(Hook.OUTPUT) == (
        "ip6 daddr != ::1 fib daddr type local udp dport 53 counter packets 0 bytes 0 dnat ip6 to [fd42::10]:53",)


def _refused_by_gate(listen: str, connect: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate_proxy_device({"type": "proxy", "listen": listen, "connect": connect,
                               "nat": "true"})
    return err.value.message


def test_wildcard_listen_without_opt_in_is_refused_by_the_gate() -> None:
    # config/ is the one gate: build_nat_ruleset only ever sees validated devices.
    assert _refused_by_gate("tcp:0.0.0.0:80", "tcp:0.0.0.0:80") == (
        'Cannot listen on wildcard address "0.0.0.0" when in nat mode')
    assert _refused_by_gate("tcp::80", "tcp:[::]:80") == (
        'Cannot listen on wildcard address "" when in nat mode')


def test_driver_prechecks() -> None:
    assert _refused_by_gate("tcp:192.0.2.2:80-82", "tcp:0.0.0.0:80-81") == (
        "Mismatch between listen port(s) and target port(s) count")
    assert _refused_by_gate("tcp:192.0.2.2:70000", "tcp:0.0.0.0:80").endswith(
        'Invalid port "70000": must be between 1 and 65535')
    # What only the instance decides: its static addresses.
    with pytest.raises(DeviceStartError, match="must be one of"):
        build_nat_ruleset(nat_device("tcp:192.0.2.2:80-82", "tcp:10.9.9.9:80"), C1, "d")


@pytest.mark.parametrize(
    "name",
    ['a"b', "a b", "a;b", "a}b", "a\nb", "a{b", "a/b", "é", "", "x" * 250],
)
def test_names_nft_cannot_print_are_rejected(name: str) -> None:
    with pytest.raises(DeviceStartError, match="^Cannot use NAT for instance device "):
        build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), C1, name)
    inst = instance(Nic("eth0", "bridged", "10.0.0.2"), name=name or "x", project="default")
    if name:
        with pytest.raises(DeviceStartError):
            build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), inst, "d")


def test_longest_label_fits_the_chain_name_limit() -> None:
    name = "x" * (249 - len("c1."))
    rs = build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), C1, name)
    assert max(len(c) for c in rs.chains) == 255


def test_bad_table_name_rejected() -> None:
    with pytest.raises(DeviceStartError, match='^Invalid nftables table name "a b"$'):
        build_nat_ruleset(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), C1, "d", table="a b")
