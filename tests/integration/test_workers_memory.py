"""1,000 TCP devices with 2 workers: at most 150 MB RSS summed over every process of the daemon
(LXD's forkproxy: about 35 MB per device)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab.daemon import RunningDaemon, worker_pids
from lab.traffic import roundtrip

pytestmark = [pytest.mark.lab, pytest.mark.slow]

DEVICES = 1000
BASE_PORT = 20000
BUDGET_MB = 150


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (namespace helpers, if any)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@pytest.mark.timeout(300)
def test_1000_tcp_devices_fit_in_150_mb(lab: Any, tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    daemon = RunningDaemon(lab, tmp_path / "state", ("--workers", "2")).start()
    try:
        devices = {f"p{i}": {"type": "proxy", "listen": f"tcp:198.18.0.1:{BASE_PORT + i}",
                             "connect": "tcp:127.0.0.1:9000"} for i in range(DEVICES)}
        t0 = time.monotonic()
        Client(endpoint=str(daemon.socket)).instances.create({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)}, "devices": devices}, wait=True)
        started_s = time.monotonic() - t0
        for i in (0, DEVICES // 2, DEVICES - 1):
            assert roundtrip(lab.host, "198.18.0.1", BASE_PORT + i) == b"ping"
        assert daemon.proc is not None
        # The daemon under `ip netns exec` is the Popen itself; its workers left its tree.
        pids = set(_tree(daemon.proc.pid))
        for worker in worker_pids(daemon.state_dir):
            pids.update(_tree(worker))
        per_process = {pid: _rss_kib(pid) for pid in pids}
        total_mb = sum(per_process.values()) / 1024
        print(f"\n{DEVICES} TCP devices started in {started_s:.1f} s; RSS by process (KiB): "
              f"{per_process}; total {total_mb:.1f} MB")
        assert len(worker_pids(daemon.state_dir)) == 2
        assert total_mb <= BUDGET_MB, per_process
    finally:
        assert daemon.shutdown(timeout=120) == 0
    for pid in worker_pids(daemon.state_dir):
        os.kill(pid, signal.SIGKILL)
