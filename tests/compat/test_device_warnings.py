"""The device manager raises and resolves LXD warnings itself: a stored device whose port was
taken while the daemon was down shows in the real ``lxc warning list`` and in pylxd's
``state().failed_devices``; once the port is free it starts by itself (retried every few
seconds), forwards, and the warning is resolved."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pylxd
import pytest

from lab.daemon import RunningDaemon
from lab.traffic import roundtrip

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

HOST = "198.18.0.1"


def warnings_csv(daemon: RunningDaemon, conf: Path, *flags: str) -> list[list[str]]:
    out = subprocess.run(["lxc", "warning", "list", "--format", "csv", "-c", "tSc", *flags],
                         env=daemon.env(conf), capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [line.split(",") for line in out.splitlines()]


def test_taken_port_warns_then_heals_within_10s(lab: Any, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    state = tmp_path / "state"
    daemon = RunningDaemon(lab, state).start()
    client = pylxd.Client(endpoint=str(daemon.socket))
    client.instances.create({
        "name": "c1", "source": {"type": "none"}, "config": {"user.lxdproxy.pid": str(inst.pid)},
        "devices": {"web": {"type": "proxy", "listen": f"tcp:{HOST}:7400",
                            "connect": "tcp:127.0.0.1:9000"}}}, wait=True)
    assert roundtrip(lab.host, HOST, 7400) == b"ping"
    assert daemon.stop() == 0  # shutdown: the device's listener is gone with the workers

    blocker = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind((HOST, 7400))
    blocker.listen(1)
    daemon = RunningDaemon(lab, state).start()
    try:
        conf = tmp_path / "lxc-conf"
        assert warnings_csv(daemon, conf) == [["Proxy device failed to start", "NEW", "1"]]
        client = pylxd.Client(endpoint=str(daemon.socket))
        failed = client.instances.get("c1").state().failed_devices
        assert list(failed) == ["web"] and "address already in use" in failed["web"]

        blocker.close()
        freed = time.monotonic()
        while time.monotonic() - freed < 10:
            try:
                if roundtrip(lab.host, HOST, 7400) == b"ping":
                    break
            except OSError:
                time.sleep(0.2)
        healed = time.monotonic() - freed
        assert healed < 10, healed
        assert warnings_csv(daemon, conf) == []  # resolved ones are listed with --all only
        [(kind, status, _count)] = warnings_csv(daemon, conf, "--all")
        assert (kind, status) == ("Proxy device failed to start", "RESOLVED")
        assert client.instances.get("c1").state().failed_devices == {}
    finally:
        blocker.close()
        daemon.stop()
