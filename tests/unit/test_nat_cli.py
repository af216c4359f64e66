"""`lxdproxy nat show`: the nft script a device would produce; LXD errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lxdproxy.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nft"


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["nat", "show", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_show_lxd_table_rules_match_capture(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = show(capsys, "listen=tcp:192.0.2.2:7009", "connect=tcp:10.123.0.10:8009",
                        "nat=true", "--instance-ip", "10.123.0.10", "--device", "ref-nat-tcp",
                        "--table", "lxd")
    assert (rc, err) == (0, "")
    captured = (FIXTURES / "nft-after-nat-tcp.txt").read_text()
    rules = [ln.split(" ", 5)[5] for ln in out.splitlines() if ln.startswith("add rule ")]
    assert rules == [
        "ip daddr 192.0.2.2 tcp dport 7009 dnat ip to 10.123.0.10:8009",
        "ip daddr 192.0.2.2 tcp dport 7009 dnat ip to 10.123.0.10:8009",
        "ip saddr 10.123.0.10 ip daddr 10.123.0.10 tcp dport 8009 masquerade",
    ]
    for rule in rules:
        assert f"\t\t{rule}\n" in captured
    assert out.startswith("add table inet lxd\nadd chain inet lxd prert.c1.ref-nat-tcp ")


def test_show_defaults_and_project(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = show(capsys, "listen=udp:[fd42::1]:53", "connect=udp:[::]:5353", "nat=true",
                      "--instance-ip", "10.0.0.2", "--instance-ip", "fd42::2",
                      "--instance", "web", "--project", "p1", "--device", "dns")
    assert rc == 0
    assert "add chain inet lxdproxy prert.p1_web.dns " in out
    assert "ip6 daddr fd42::1 udp dport 53 counter packets 0 bytes 0 dnat ip6 to [fd42::2]:5353\n" \
        in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["listen=tcp:192.0.2.2:80", "connect=tcp:10.0.0.9:80", "nat=true"],
         "Connect IP \"10.0.0.9\" must be one of the instance's static IPv4 addresses\n"),
        (["listen=tcp:0.0.0.0:80", "connect=tcp:0.0.0.0:80", "nat=true"],
         'Cannot listen on wildcard address "0.0.0.0" when in nat mode\n'),
        (["listen=tcp:[::1]:80", "connect=tcp:[::]:80", "nat=true"],
         "Instance has no static IPv6 address assigned to be used as the connect IP\n"),
        (["listen=tcp:192.0.2.2:80", "connect=tcp:localhost:80", "nat=true"],
         'Invalid value for device option "connect": Not an IP address "localhost"\n'),
        (["listen=tcp:192.0.2.2:80", "connect=udp:0.0.0.0:80", "nat=true"],
         "Proxying tcp <-> udp is not supported when using NAT\n"),
        (["listen=tcp:192.0.2.2:80", "connect=tcp:0.0.0.0:80"], "Not a NAT device: set nat=true\n"),
        (["listen=tcp:192.0.2.2:80", "connect=tcp:0.0.0.0:80", "nat=true", "--device", "a;b"],
         'Cannot use NAT for instance device "c1.a;b": instance, device and project names may '
         'only contain ASCII letters, digits, "_", "." and "-" in NAT mode\n'),
    ],
)
def test_errors_are_lxd_messages_exit_1(capsys: pytest.CaptureFixture[str], argv: list[str],
                                        message: str) -> None:
    rc, out, err = show(capsys, *argv, "--instance-ip", "10.123.0.10")
    assert (rc, out, err) == (1, "", message)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert show(capsys, "listen", "--instance-ip", "10.0.0.1")[0] == 2
    assert show(capsys, "nat=true", "--instance-ip", "nope")[0] == 2
    assert main(["nat"]) == 2


def test_no_traceback_from_the_real_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lxdproxy.cli", "nat", "show", "listen=tcp:1.2.3.4:99999",
         "connect=tcp:0.0.0.0:80", "nat=true", "--instance-ip", "10.0.0.1"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.strip()
