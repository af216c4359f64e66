"""DHCP inside the lab: dnsmasq on lab.host's bridge, busybox udhcpc inside an instance.

dnsmasq runs in the lab host's netns only (``--bind-interfaces --interface=br0``, no DNS), with
its pid, lease and hosts files under a directory the test gives; each instance MAC gets the
address the hosts file names, so a test decides which lease comes next (``assign`` + SIGHUP,
then the client renews: dnsmasq refuses the old address and the client takes the new one).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

# Runs inside the instance: the address (and the default route) from the lease.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr replace "$ip/$mask" dev "$interface"
    for other in $(ip -4 -o addr show dev "$interface" | awk '{print $4}'); do
      [ "$other" = "$ip/$mask" ] || ip -4 addr del "$other" dev "$interface"
    done
    [ -n "$router" ] && ip -4 route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
"""


class DhcpServer:
    def __init__(self, lab: Any, files: Path, mac: str, address: str) -> None:
        """Serve ``address`` to ``mac`` (read at start: no signal can race dnsmasq's start)."""
        self.lab = lab
        self.files = files
        self.hosts = files / "dhcp-hosts"
        self.hosts.write_text(f"{mac},{address}\n")
        self.proc = lab.host.popen(
            ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
             "--bind-interfaces", "--interface=br0", "--except-interface=lo", "--user=root",
             "--dhcp-range=198.18.0.100,198.18.0.199,255.255.255.0,2m",
             f"--dhcp-hostsfile={self.hosts}", f"--dhcp-leasefile={files / 'leases'}",
             f"--pid-file={files / 'dnsmasq.pid'}", "--dhcp-authoritative"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def assign(self, mac: str, address: str) -> None:
        """The address ``mac`` gets from now on (dnsmasq re-reads the hosts file on SIGHUP)."""
        self.hosts.write_text(f"{mac},{address}\n")
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # SIGHUP is handled in dnsmasq's loop: let it re-read first

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class DhcpClient:
    """busybox udhcpc on the instance's eth0 (its script sets the address and route)."""

    def __init__(self, inst: Any, script_dir: Path) -> None:
        self.inst = inst
        script = script_dir / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        os.chmod(script, 0o755)
        self.proc = inst.popen(["busybox", "udhcpc", "-f", "-i", "eth0", "-s", str(script),
                                "-t", "20", "-T", "1", "-A", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def renew(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def mac_of(inst: Any, ifname: str = "eth0") -> str:
    # From netlink, not /sys: the instance's /sys is the sysfs of the netns that mounted it.
    return json.loads(inst.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["address"]


def global_addresses(inst: Any, version: int, ifname: str = "eth0") -> list[str]:
    out = inst.run(["ip", "-j", f"-{version}", "addr", "show", "dev", ifname]).stdout
    return [a["local"] for link in json.loads(out or b"[]") for a in link.get("addr_info", [])
            if a.get("scope") == "global"]


def wait_for_address(inst: Any, address: str, timeout: float = 30.0) -> float:
    """Wait until ``address`` is on the instance's eth0; returns time.monotonic() then."""
    version = ipaddress.ip_address(address).version
    deadline = time.monotonic() + timeout
    while address not in global_addresses(inst, version):
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} never came: {global_addresses(inst, version)}")
        time.sleep(0.02)
    return time.monotonic()
