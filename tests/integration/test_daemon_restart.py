"""The real daemon in lab.host: kill -9 and restart brings every acknowledged device back (the
workers never stopped forwarding); `lxdproxy shutdown` stops devices cleanly (NAT rules and
host unix sockets gone) and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab.daemon import LXDPROXY, NFT_TABLE, RunningDaemon
from lab.traffic import eventually_roundtrip, roundtrip, unix_roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


def nft_table(lab: Any) -> str:
    out = lab.host.run(["nft", "-j", "list", "ruleset"]).stdout
    tables = [o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o]
    return "present" if NFT_TABLE in tables else "absent"


def test_kill9_restart_restores_devices_and_sigterm_cleans_up(lab: Any, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    host_sock = tmp_path / "web.sock"
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    try:
        client = Client(endpoint=str(daemon.socket))
        client.instances.create({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)},
            "devices": {
                "eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
                "tcp": {"type": "proxy", "listen": f"tcp:{HOST}:7300",
                        "connect": "tcp:127.0.0.1:9000"},
                "nat": {"type": "proxy", "listen": f"tcp:{HOST}:7301",
                        "connect": f"tcp:{inst.ipv4}:9000", "nat": "true"},
            }}, wait=True)
        c1 = client.instances.get("c1")
        c1.devices["unix"] = {"type": "proxy", "listen": f"unix:{host_sock}",
                              "connect": "tcp:127.0.0.1:9000"}
        c1.save(wait=True)
        assert roundtrip(lab.host, HOST, 7300) == b"ping"
        assert roundtrip(lab.host, HOST, 7301) == b"ping"
        assert unix_roundtrip(str(host_sock)) == b"ping"
        assert nft_table(lab) == "present"

        daemon.kill9()
        assert roundtrip(lab.host, HOST, 7300) == b"ping"  # the workers still forward

        daemon.start()  # the stale API socket and unix listener are replaced
        assert eventually_roundtrip(lab.host, HOST, 7300) == b"ping"
        assert roundtrip(lab.host, HOST, 7301) == b"ping"
        assert unix_roundtrip(str(host_sock)) == b"ping"
        assert set(Client(endpoint=str(daemon.socket)).instances.get("c1").devices) == {
            "eth0", "tcp", "nat", "unix"}
        assert oct(os.stat(daemon.socket).st_mode & 0o777) == "0o660"

        assert daemon.shutdown() == 0
        assert not host_sock.exists()
        assert not daemon.socket.exists()
        assert nft_table(lab) == "absent" or b"7301" not in lab.host.run(
            ["nft", "list", "table", "inet", NFT_TABLE]).stdout
        with pytest.raises(ConnectionRefusedError):
            roundtrip(lab.host, HOST, 7300)
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def test_second_daemon_on_the_same_state_or_socket_is_refused(lab: Any, tmp_path: Path) -> None:
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    try:
        other = lab.host.run([str(LXDPROXY), "serve",
                              "--state-dir", str(tmp_path / "state")], check=False)
        assert other.returncode == 1
        assert b"Another daemon is already running with state directory" in other.stderr
        other = lab.host.run([str(LXDPROXY), "serve", "--state-dir", str(tmp_path / "other"),
                              "--socket", str(daemon.socket)], check=False)
        assert other.returncode == 1
        assert b"Another daemon is already listening on" in other.stderr
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.socket))  # the first one still answers
        s.close()
    finally:
        assert daemon.stop() == 0


def test_instance_restart_is_followed(lab: Any, tmp_path: Path) -> None:
    """A local instance re-pointed at its new PID (PATCH user.lxdproxy.pid) gets its devices
    re-created in the new namespaces; while its PID is gone it shows Stopped."""
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    try:
        client = Client(endpoint=str(daemon.socket))
        client.instances.create({"name": "c1", "source": {"type": "none"},
                                 "config": {"user.lxdproxy.pid": str(inst.pid)},
                                 "devices": {"tcp": {"type": "proxy",
                                                     "listen": f"tcp:{HOST}:7310",
                                                     "connect": "tcp:127.0.0.1:9000"}}},
                                wait=True)
        assert roundtrip(lab.host, HOST, 7310) == b"ping"
        inst.restart()
        lab.echo(inst, "tcp", "127.0.0.1", 9000)
        client.instances.get("c1").patch({"config": {"user.lxdproxy.pid": str(inst.pid)}})
        assert eventually_roundtrip(lab.host, HOST, 7310) == b"ping"
        assert client.instances.get("c1").state().pid == inst.pid
    finally:
        assert daemon.shutdown() == 0
    with pytest.raises(ConnectionRefusedError):
        roundtrip(lab.host, HOST, 7310)
