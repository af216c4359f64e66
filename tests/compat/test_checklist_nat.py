"""LXD checklist part B5-B14 (spec §7): NAT mode through the real ``lxc`` client, checking the
nftables chains in lab.host (where the daemon runs) line by line.

LXD's test uses a managed network 192.0.2.1/24 with the instance at 192.0.2.10 / 2001:db8::100;
here the lab bridge br0 (198.18.0.1/24, fd42::1/64) with the instance's own static addresses
stands in (house rule: no other addresses), so the expected lines carry those addresses.
The run with ``--nft-table lxd`` checks LXD's own table name; the default table is ``lxdproxy``
(docs/compatibility.md, NAT table, row "nftables table").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lab.checklist import (
    Daemon,
    echo_server,
    eventually,
    nat_chains,
    tcp_echo,
)

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

LXD_B7 = """table inet lxd {{
\tchain prert.nattest.validNAT {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 127.0.0.1 tcp dport 1234 dnat ip to {v4}:1234
\t}}

\tchain out.nattest.validNAT {{
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr 127.0.0.1 tcp dport 1234 dnat ip to {v4}:1234
\t}}

\tchain pstrt.nattest.validNAT {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {v4} ip daddr {v4} tcp dport 1234 masquerade
\t}}
}}
"""

LABEL = "nattest.validNAT"


def absent(d: Daemon, label: str = LABEL) -> bool:
    return all(rules is None for rules in nat_chains(d, label).values())


def dnat_only(d: Daemon, line: str, masquerade: list[str], label: str = LABEL) -> None:
    """Exactly ``line`` in prert and in out (LXD's test greps for a count of 1), and the hairpin
    masquerade rules in pstrt (spec §5.1). Outside LXD's own table the DNAT rule carries a
    counter (metrics), still at 0: the rules are read right after they were applied."""
    if d.nft_table != "lxd":
        line = line.replace(" dnat ", " counter packets 0 bytes 0 dnat ")
    chains = nat_chains(d, label)
    assert chains == {"prert": [line], "out": [line], "pstrt": masquerade}, chains


@pytest.mark.parametrize("table", ["lxd", None], ids=["table-lxd", "table-lxdproxy"])
def test_b5_to_b14_nat(lab: Any, tmp_path: Path, table: str | None) -> None:
    d = Daemon(lab, tmp_path, nft_table=table).start()
    try:
        _run_nat_checklist(lab, d)
    finally:
        assert d.stop() == 0, d.log.read_text()
    assert d.ruleset().strip() == ""  # nothing left behind in lab.host


def _run_nat_checklist(lab: Any, d: Daemon) -> None:
    inst = lab.add_instance("nattest")
    v4, v6 = inst.ipv4, inst.ipv6
    before = d.ruleset()

    # B5: instance with a bridged eth0 and static addresses; no chains yet
    d.register("nattest", inst)
    assert absent(d)

    # B6: non-NAT device -> still no NAT chains (a forwarder instead: traffic flows)
    echo_server(lab, inst, "tcp", v4, 1234)
    d.add("nattest", "validNAT", "listen=tcp:127.0.0.1:1234", f"connect=tcp:{v4}:1234",
          "bind=host")
    assert absent(d)
    assert tcp_echo(lab, 1234) == b"checklist\n"

    # B7: nat=true -> exactly one DNAT line in prert and out
    d.lxc("config", "device", "set", "nattest", "validNAT", "nat", "true")
    dnat_only(d, f"ip daddr 127.0.0.1 tcp dport 1234 dnat ip to {v4}:1234",
              [f"ip saddr {v4} ip daddr {v4} tcp dport 1234 masquerade"])
    if d.nft_table == "lxd":
        # the whole table, byte for byte in LXD 5.0.2's layout (chain order, priorities as
        # `nft list` prints them: fixtures/lxd-5.0.2/nft-after-nat-tcp.txt, minus lxdbr0's chains)
        assert d.ruleset() == LXD_B7.format(v4=v4)

    # B8
    d.remove("nattest", "validNAT")
    assert absent(d)

    # B9: a listen range onto one target port
    d.add("nattest", "validNAT", "listen=tcp:127.0.0.1:1234-1235", f"connect=tcp:{v4}:1234",
          "nat=true")
    dnat_only(d, f"ip daddr 127.0.0.1 tcp dport 1234-1235 dnat ip to {v4}:1234",
              [f"ip saddr {v4} ip daddr {v4} tcp dport 1234 masquerade"])
    d.remove("nattest", "validNAT")
    assert absent(d)

    # B10: identical ranges -> the target keeps the port
    d.add("nattest", "validNAT", "listen=tcp:127.0.0.1:1234-1235",
          f"connect=tcp:{v4}:1234-1235", "nat=true")
    dnat_only(d, f"ip daddr 127.0.0.1 tcp dport 1234-1235 dnat ip to {v4}",
              [f"ip saddr {v4} ip daddr {v4} tcp dport 1234-1235 masquerade"])
    d.remove("nattest", "validNAT")
    assert absent(d)

    # B11: IPv6, wildcard connect resolved to the NIC's static IPv6
    d.add("nattest", "validNAT", "listen=tcp:[::1]:1234", "connect=tcp:[::]:1234", "nat=true")
    dnat_only(d, f"ip6 daddr ::1 tcp dport 1234 dnat ip6 to [{v6}]:1234",
              [f"ip6 saddr {v6} ip6 daddr {v6} tcp dport 1234 masquerade"])

    # B12: unset nat -> the chains go, the device falls back to the forwarder
    echo_server(lab, inst, "tcp", "::1", 1234)  # connect [::] dials loopback
    d.lxc("config", "device", "unset", "nattest", "validNAT", "nat")
    assert absent(d)
    assert tcp_echo(lab, 1234, host="::1") == b"checklist\n"
    d.remove("nattest", "validNAT")

    # B13: tcp -> udp without NAT is accepted, no chains
    d.add("nattest", "invalidNAT", "listen=tcp:127.0.0.1:1234", f"connect=udp:{v4}:1234",
          "bind=host")
    assert absent(d) and absent(d, "nattest.invalidNAT")

    # Beyond LXD's test: traffic really takes the DNAT path (listen on the bridge address, a
    # client in lab.host; loopback listens need route_localnet, spec quirk §9.5).
    echo_server(lab, inst, "tcp", v4, 8080, tag=True)
    d.add("nattest", "web", f"listen=tcp:{lab.host.ipv4}:1240", f"connect=tcp:{v4}:8080",
          "nat=true")
    assert tcp_echo(lab, 1240, host=lab.host.ipv4) == b"8080:checklist\n"

    # B14: delete the instance -> no chains of it remain
    _delete_instance(d, inst)
    assert absent(d) and absent(d, "nattest.web")
    assert eventually(lambda: d.ruleset() == before)
    assert inst.proc.poll() is None  # lxdproxy never signals a process it does not own


def _delete_instance(d: Daemon, inst: Any) -> None:
    """LXD's test runs ``lxc delete -f nattest`` (a forced stop, then DELETE)."""
    d.lxc("delete", "-f", "nattest")
    assert d.lxc("list", "--format", "csv").stdout == ""


def test_nat_start_failures_lxd_texts(lab: Any, tmp_path: Path) -> None:
    """NAT target resolution happens at start (spec §3): LXD's texts behind the start prefix of
    fixtures/lxd-5.0.2/put-start-failure-c1-wait.json; nothing is left in nftables."""
    d = Daemon(lab, tmp_path).start()
    try:
        inst = lab.add_instance("nattest")
        d.register("nattest", inst, nic=False)
        prefix = 'Error: Failed to start device "validNAT": '
        err = d.lxc_error("config", "device", "add", "nattest", "validNAT", "proxy",
                          "listen=tcp:127.0.0.1:1234", "connect=tcp:0.0.0.0:1234", "nat=true")
        assert err == prefix + ("Instance has no static IPv4 address assigned to be used as the "
                                "connect IP")
        err = d.lxc_error("config", "device", "add", "nattest", "validNAT", "proxy",
                          "listen=tcp:[::1]:1234", f"connect=tcp:[{inst.ipv6}]:1234", "nat=true")
        assert err == prefix + (f'Connect IP "{inst.ipv6}" must be one of the instance\'s static '
                                "IPv6 addresses")
        assert absent(d) and "validNAT" not in d.lxc("config", "device", "list", "nattest").stdout
    finally:
        assert d.stop() == 0, d.log.read_text()
    assert d.ruleset().strip() == ""
