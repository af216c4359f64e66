"""The bench topology on top of the test lab: one instance with the servers, clients in the lab host."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lxdproxy.netns import netns_executor

REPO = Path(__file__).resolve().parents[1]
# iperf3 servers in the instance (tcp control + data, udp data), one per peer from this port up: after a
# UDP flood a proxy keeps delivering what its listening socket had queued, and a stale datagram that
# reaches the next test's server first would be taken for that test's client.
IPERF_PORT = 5201
ECHO_PORT = 7000  # TCP echo server in the instance

# Many short connections leave TIME_WAIT sockets on the connecting side (the clients in the lab host,
# and a proxy's outgoing side in the instance). These are per-netns sysctls of the lab's namespaces.
# Every port a peer listens on is below EPHEMERAL_LOW, so a client's source port (its local address is
# 198.18.0.1 too) never takes a port a listener is about to bind.
EPHEMERAL_LOW = 30000
_CONN_SYSCTLS = {
    "net/ipv4/ip_local_port_range": f"{EPHEMERAL_LOW} 65000",
    "net/ipv4/tcp_tw_reuse": "1",
    "net/core/somaxconn": "4096",
    "net/ipv4/tcp_max_syn_backlog": "4096",
}


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


def wait_line(proc: subprocess.Popen[Any], want: str, timeout: float, what: str) -> str:
    """Read proc.stdout until a line containing ``want``; bounded by ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            line = proc.stdout.readline()
            text = line.decode(errors="replace") if isinstance(line, bytes) else line
            if want in text:
                return text
            if not text:
                break
        elif proc.poll() is not None:
            break
    try:
        code = proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: no {want!r} within {timeout}s") from None
    raise RuntimeError(f"{what} exited ({code}) before printing {want!r}")


class BenchEnv:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.host = lab.host
        self.inst = lab.add_instance(name="bench")
        self.python = sys.executable  # the venv's: uvloop for the echo server; never leaves the lab
        self.echo_pid: int | None = None  # the echo server (its workers are its children)
        for path in (self.host.path, self.inst.namespaces.net):
            netns_executor(path).call(_write_sysctls)

    def start_servers(self, iperf_ports: tuple[int, ...] = (IPERF_PORT,)) -> None:
        for port in iperf_ports:
            self.inst.popen(["iperf3", "-s", "-p", str(port), "--idle-timeout", "30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
        echo = self.inst.popen([self.python, "-m", "benchmarks.servers", "echo", str(ECHO_PORT)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_python_env(),
                               cwd=str(REPO))
        wait_line(echo, "READY", 15, "echo server")
        self.echo_pid = echo.pid
        for port in iperf_ports:
            self.wait_listening(self.inst, "tcp", port, 10)

    # -- running things --------------------------------------------------------------------------
    def host_python(self, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return self.host.popen([self.python, "-m", *args], env=_python_env(), cwd=str(REPO), **kw)

    def client_json(self, *args: str, timeout: float) -> dict[str, Any]:
        proc = self.host_python("benchmarks.clients", *args)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"client {args[:3]} took longer than {timeout}s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"client {args[:3]} failed with {proc.returncode}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def host_json(self, argv: list[str], timeout: float) -> dict[str, Any]:
        """Run a JSON-printing tool (iperf3 -J) in the lab host."""
        res = self.host.run(argv, check=False, timeout=timeout)
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            raise RuntimeError(f"{argv[0]} gave no JSON (exit {res.returncode}): "
                               f"{res.stderr.decode(errors='replace')[-300:]}") from None
        if doc.get("error"):
            raise RuntimeError(f"{argv[0]}: {doc['error']}")
        return doc

    def wait_listening(self, where: Any, proto: str, port: int, timeout: float) -> None:
        flag = "-Hltn" if proto == "tcp" else "-Huln"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = where.run(["ss", flag, f"sport = :{port}"], check=False)
            if res.stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listening on {proto} port {port} after {timeout}s")


def _write_sysctls() -> None:
    for key, value in _CONN_SYSCTLS.items():
        Path("/proc/sys", key).write_text(value)
