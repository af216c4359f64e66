"""The real daemon with worker processes, in the lab: a restart of the control plane (SIGTERM,
kill -9) and `lxdproxy reload` are no outage; an API update keeps established connections;
removal refuses at once; `lxdproxy shutdown` leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab.continuity import ConnectLoop, HeldConnection
from lab.daemon import LXDPROXY, NFT_TABLE, RunningDaemon, worker_pids
from lab.traffic import roundtrip
from lab.waiting import process_alive

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"
PORT = 7500


def _nft_tables(lab: Any) -> list[str]:
    out = lab.host.run(["nft", "-j", "list", "ruleset"]).stdout
    return [o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o]


def _create(daemon: RunningDaemon, inst: Any, devices: dict[str, dict[str, str]]) -> Client:
    client = Client(endpoint=str(daemon.socket))
    client.instances.create({
        "name": "c1", "source": {"type": "none"},
        "config": {"user.lxdproxy.pid": str(inst.pid)},
        "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
                    **devices}}, wait=True)
    return client


def _refused(lab: Any, port: int) -> bool:
    sock = lab.host.socket()
    try:
        sock.connect((HOST, port))
    except ConnectionRefusedError:
        return True
    finally:
        sock.close()
    return False


@pytest.fixture
def daemon(lab: Any, tmp_path: Path) -> Any:
    d = RunningDaemon(lab, tmp_path / "state", ("--workers", "2"))
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.shutdown()
    for pid in worker_pids(d.state_dir):  # a test that failed half way
        os.kill(pid, signal.SIGKILL)


def test_held_connection_and_connect_loop_across_sigterm_and_kill9(
        lab: Any, daemon: RunningDaemon, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    host_sock = tmp_path / "web.sock"
    daemon.start()
    _create(daemon, inst, {
        "tcp": {"type": "proxy", "listen": f"tcp:{HOST}:{PORT}", "connect": "tcp:127.0.0.1:9000"},
        "nat": {"type": "proxy", "listen": f"tcp:{HOST}:{PORT + 1}",
                "connect": f"tcp:{inst.ipv4}:9000", "nat": "true"},
        "unix": {"type": "proxy", "listen": f"unix:{host_sock}", "connect": "tcp:127.0.0.1:9000"},
    })
    workers = worker_pids(daemon.state_dir)
    assert len(workers) == 2
    held = HeldConnection(lab.host, (HOST, PORT))
    assert held.echo()

    # SIGTERM: the control plane detaches; listeners, connections, NAT rules and unix socket
    # files stay.
    assert daemon.stop(signal.SIGTERM) == 0
    assert held.echo()
    assert roundtrip(lab.host, HOST, PORT) == b"ping"
    assert roundtrip(lab.host, HOST, PORT + 1) == b"ping"
    assert host_sock.exists() and NFT_TABLE in _nft_tables(lab)
    daemon.start()
    assert worker_pids(daemon.state_dir) == workers  # found, not respawned
    assert held.echo()

    # kill -9 and restart while a client connects every 20 ms.
    with ConnectLoop(lab.host, (HOST, PORT), interval=0.02, duration=30) as loop:
        time.sleep(0.3)
        daemon.kill9()
        time.sleep(0.3)
        assert held.echo()
        daemon.start()
        time.sleep(0.3)
    result = loop.result
    print(f"\nkill -9 + restart: {result.attempts} connects, {result.refused} refused, "
          f"{result.failed} failed, longest gap {result.longest_gap_ms:.0f} ms")
    assert result.refused == 0 and result.failed == 0, result.errors
    assert result.ok > 20
    assert held.echo()
    assert worker_pids(daemon.state_dir) == workers
    # The restarted control plane knows the devices (and can change them).
    client = Client(endpoint=str(daemon.socket))
    assert set(client.instances.get("c1").devices) == {"eth0", "tcp", "nat", "unix"}

    # Shutdown: nothing left: no process, no socket file, no nft table.
    held.close()
    assert daemon.shutdown() == 0
    assert worker_pids(daemon.state_dir) == []
    assert not any(process_alive(pid) for pid in workers)
    assert not host_sock.exists() and not daemon.socket.exists()
    assert list((daemon.state_dir / "workers").glob("*.sock")) == []
    assert NFT_TABLE not in _nft_tables(lab) or f"{PORT + 1}".encode() not in lab.host.run(
        ["nft", "list", "table", "inet", NFT_TABLE]).stdout
    assert _refused(lab, PORT)


def test_reload_cli_replaces_workers_without_loss(lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    daemon.start()
    _create(daemon, inst, {"tcp": {"type": "proxy", "listen": f"tcp:{HOST}:{PORT}",
                                   "connect": "tcp:127.0.0.1:9000"}})
    old = worker_pids(daemon.state_dir)
    held = HeldConnection(lab.host, (HOST, PORT))
    assert held.echo()
    with ConnectLoop(lab.host, (HOST, PORT), interval=0.02, duration=30) as loop:
        time.sleep(0.3)
        done = subprocess.run([str(LXDPROXY), "reload", "--socket", str(daemon.socket)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        time.sleep(0.3)
    result = loop.result
    print(f"\nreload: {result.attempts} connects, {result.refused} refused, {result.failed} "
          f"failed, longest gap {result.longest_gap_ms:.0f} ms")
    assert result.refused == 0 and result.failed == 0, result.errors
    assert held.echo(), "the held connection drains in its old worker"
    now = worker_pids(daemon.state_dir)
    assert len(set(now) - set(old)) == 2
    held.close()
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in old):
        assert time.monotonic() < deadline, "old workers did not exit once drained"
        time.sleep(0.05)


def test_update_through_the_api_keeps_established_connections(lab: Any,
                                                              daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000, 9001, tag=True)
    daemon.start()
    client = _create(daemon, inst, {"tcp": {"type": "proxy", "listen": f"tcp:{HOST}:{PORT}",
                                            "connect": "tcp:127.0.0.1:9000"}})
    held = HeldConnection(lab.host, (HOST, PORT), tag=b"9000:")
    assert held.echo()
    c1 = client.instances.get("c1")
    c1.devices["tcp"]["connect"] = "tcp:127.0.0.1:9001"
    c1.save(wait=True)
    assert roundtrip(lab.host, HOST, PORT) == b"9001:ping"
    assert held.echo(), "an update of connect must not cut established connections"
    # Removal: new connects are refused at once.
    c1 = client.instances.get("c1")
    del c1.devices["tcp"]
    t0 = time.monotonic()
    c1.save(wait=True)
    assert _refused(lab, PORT)
    print(f"\nremoval: refused {1000 * (time.monotonic() - t0):.0f} ms after the PUT was sent")
    held.close()


def test_workers_0_forwards_in_the_daemon(lab: Any, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    daemon = RunningDaemon(lab, tmp_path / "state", ("--workers", "0")).start()
    try:
        _create(daemon, inst, {"tcp": {"type": "proxy", "listen": f"tcp:{HOST}:{PORT}",
                                       "connect": "tcp:127.0.0.1:9000"}})
        assert roundtrip(lab.host, HOST, PORT) == b"ping"
        assert worker_pids(daemon.state_dir) == []
        reload = subprocess.run([str(LXDPROXY), "reload", "--socket", str(daemon.socket)],
                                capture_output=True, text=True, timeout=60)
        assert reload.returncode == 1
        assert reload.stderr == ("Error: Reload needs worker processes (the daemon runs with "
                                 "--workers 0)\n")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0  # in-process: SIGTERM stops everything
    assert _refused(lab, PORT)
