"""Floods against the real daemon with its fd limit lowered by prlimit (issue 12, failure 1):
TCP clients, UDP source ports and half-open TLS clients each leave the API answering and an
unrelated device forwarding, and the daemon's fds return to their baseline afterwards."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from pylxd import Client

from lab.daemon import LXDPROXY, NFT_TABLE, shutdown_daemon, start_in_lab_host, worker_pids
from lab.traffic import roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"
NOFILE = 1024  # reserve 512, so a device may hold (1024 - 512) / 2 fds


class Flooded:
    def __init__(self, lab: Any, tmp_path: Path, *extra: str, nofile: int = NOFILE) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.log = tmp_path / "daemon.log"
        # One worker: it inherits the lowered limit, and its budget is the one flooded.
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", str(LXDPROXY), "serve", "--state-dir",
                str(self.state), "--nft-table", NFT_TABLE, "--workers", "1", *extra]
        self.proc = start_in_lab_host(lab, argv, self.log)
        self.client = Client(endpoint=str(self.state / "unix.socket"))
        self.inst = lab.add_instance()
        lab.echo(self.inst, "tcp", "127.0.0.1", 9000)
        lab.echo(self.inst, "udp", "127.0.0.1", 9001)
        self.client.instances.create({
            "name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(self.inst.pid)},
            "devices": {
                "flood": {"type": "proxy", "listen": f"tcp:{HOST}:7500",
                          "connect": "tcp:127.0.0.1:9000"},
                "uflood": {"type": "proxy", "listen": f"udp:{HOST}:7600-7604",
                           "connect": "udp:127.0.0.1:9001"},
                "quiet": {"type": "proxy", "listen": f"tcp:{HOST}:7501",
                          "connect": "tcp:127.0.0.1:9000"},
            }}, wait=True)

    def pids(self) -> list[int]:
        return [self.proc.pid, *worker_pids(self.state)]

    def fds(self) -> int:
        """Open fds of the daemon and its worker together."""
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.pids())

    def busiest(self) -> int:
        """The most fds one process holds (each has the lowered limit to itself)."""
        return max(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.pids())

    def healthy(self, lab: Any) -> None:
        """The API answers and the unrelated device forwards, now."""
        started = time.monotonic()
        assert self.client.instances.get("c1").name == "c1"
        assert roundtrip(lab.host, HOST, 7501) == b"ping"
        assert time.monotonic() - started < 5

    def settle(self, baseline: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.fds() > baseline + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.fds()

    def stop(self) -> str:
        """Shut down (workers too); the daemon's log and its workers' logs."""
        shutdown_daemon(self.proc, self.state / "unix.socket")
        return self.log.read_text() + "".join(
            p.read_text() for p in sorted((self.state / "workers").glob("*.log")))


def test_tcp_flood(lab: Any, tmp_path: Path) -> None:
    d = Flooded(lab, tmp_path)
    try:
        assert roundtrip(lab.host, HOST, 7500) == b"ping"
        d.healthy(lab)  # the target-socket pools are filled: that is the baseline
        time.sleep(0.5)
        baseline = d.fds()
        clients = []
        for _ in range(600):  # ~7 times what the device may hold
            sock = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect((HOST, 7500))
            clients.append(sock)
        time.sleep(1)
        refused = 0
        for sock in clients:
            sock.settimeout(0.05)
            try:
                refused += sock.recv(1) == b""  # accepted and closed at once
            except TimeoutError:
                pass
        assert refused >= 400, refused
        d.healthy(lab)
        assert d.busiest() < NOFILE - 256  # the reserve was never touched
        for sock in clients:
            sock.close()
        assert d.settle(baseline) <= baseline + 2
        d.healthy(lab)
    finally:
        log = d.stop()
    assert "connection refused: the file-descriptor budget is used up" in log
    assert "Traceback" not in log


def test_udp_source_port_flood(lab: Any, tmp_path: Path) -> None:
    d = Flooded(lab, tmp_path)
    try:
        d.healthy(lab)
        time.sleep(0.5)
        baseline = d.fds()
        senders = []
        for i in range(2000):  # 2,000 source ports over a 5-port range
            sock = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.sendto(b"x", (HOST, 7600 + i % 5))
            senders.append(sock)
        time.sleep(1)
        d.healthy(lab)
        assert d.busiest() < NOFILE - 256
        # The newest clients are served: their sessions evicted the least recently active.
        senders[-1].settimeout(5)
        senders[-1].sendto(b"late", (HOST, 7604))
        assert senders[-1].recv(100) in (b"x", b"late")
        for sock in senders:
            sock.close()
        c1 = d.client.instances.get("c1")
        del c1.devices["uflood"]  # its sessions would otherwise idle for 30 minutes
        c1.save(wait=True)
        assert d.settle(baseline) <= baseline + 2
        d.healthy(lab)
    finally:
        log = d.stop()
    assert "least recently active UDP session evicted for a new client" in log
    assert "Traceback" not in log


def test_half_open_tls_flood(lab: Any, tmp_path: Path) -> None:
    d = Flooded(lab, tmp_path, "--https", f"{HOST}:8443")
    try:
        d.healthy(lab)
        time.sleep(0.5)
        baseline = d.fds()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        held = []
        for _ in range(300):  # handshake, then never finish the headers
            raw = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.connect((HOST, 8443))
            tls = ctx.wrap_socket(raw)
            tls.sendall(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n")
            held.append(tls)
        d.healthy(lab)
        assert d.busiest() < NOFILE - 256
        time.sleep(11)  # the header timeout (10 s) closes every one of them
        closed = 0
        for tls in held:
            tls.settimeout(1)
            try:
                closed += tls.recv(1) == b""
            except (OSError, ssl.SSLError):
                closed += 1
        assert closed == len(held)
        assert d.settle(baseline) <= baseline + 2
        d.healthy(lab)
        for tls in held:
            tls.close()
    finally:
        log = d.stop()
    assert "Traceback" not in log
