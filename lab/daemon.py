"""Run the real ``lxdproxy serve`` inside ``lab.host`` (so its listeners and NAT rules land in
the lab's host netns) and talk to it over its unix socket."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lxdproxy.cli.api_client import ApiError, DaemonClient

REPO = Path(__file__).resolve().parents[1]
LXDPROXY = REPO / ".venv" / "bin" / "lxdproxy"
NFT_TABLE = "lxdproxytest"


def start_in_lab_host(lab: Any, argv: list[str], log_path: Path, timeout: float = 20.0, *,
                      env: dict[str, str] | None = None,
                      cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``lxdproxy serve`` in lab.host (stderr to ``log_path``) and wait for its ready line.
    ``env``: the process's whole environment (default: ours); ``cwd``: its directory."""
    with open(log_path, "ab") as log:
        proc = lab.host.popen(argv, stdout=subprocess.PIPE, stderr=log, env=env, cwd=cwd)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(b"lxdproxy: listening on"):
                return proc
            if not line:
                break
    raise RuntimeError(f"daemon did not start:\n{log_path.read_text()}")


def shutdown_daemon(proc: subprocess.Popen[bytes], socket_path: Path | str,
                    timeout: float = 20.0) -> int:
    """``lxdproxy shutdown`` (devices, workers, NAT rules, unix sockets: all gone), then the
    exit code. A SIGTERM alone would leave the workers forwarding, as it does in production."""
    if proc.poll() is None:
        done = subprocess.run([str(LXDPROXY), "shutdown", "--socket", str(socket_path),
                               "--timeout", str(timeout)], capture_output=True, timeout=timeout + 5)
        if done.returncode != 0 and proc.poll() is None:
            proc.terminate()
    code = proc.wait(timeout)
    if proc.stdout:
        proc.stdout.close()
    return code


def worker_pids(state_dir: Path) -> list[int]:
    """The data-plane workers serving ``state_dir`` (their control sockets live under it)."""
    marker = f"--socket\0{state_dir.absolute()}/workers/".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"lxdproxy.workers.worker_main" in cmdline and marker in cmdline:
            pids.append(int(entry))
    return sorted(pids)


class RunningDaemon:
    def __init__(self, lab: Any, state_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.extra_args = list(extra_args)
        self.state_dir = state_dir
        self.socket = state_dir / "unix.socket"
        self.log = state_dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RunningDaemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc = start_in_lab_host(
            self.lab, [str(LXDPROXY), "serve", "--state-dir", str(self.state_dir),
                       "--nft-table", NFT_TABLE, *self.extra_args], self.log, timeout)
        return self

    def shutdown(self, timeout: float = 20.0) -> int:
        """Stop the daemon and everything it runs (``lxdproxy shutdown``)."""
        assert self.proc is not None
        return shutdown_daemon(self.proc, self.socket, timeout)

    def stop(self, sig: int | None = None, timeout: float = 20.0) -> int:
        """``shutdown()``, or send ``sig`` (SIGTERM/SIGINT detach from the workers) and wait."""
        assert self.proc is not None
        if sig is None:
            return self.shutdown(timeout)
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def env(self, conf_dir: Path) -> dict[str, str]:
        return {**os.environ, "LXD_CONF": str(conf_dir), "LXD_SOCKET": str(self.socket)}



def lxdproxy_argv() -> list[str]:
    """The console script next to this interpreter (``-m lxdproxy.cli`` when not installed)."""
    script = Path(sys.executable).with_name("lxdproxy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lxdproxy.cli"]


def start_daemon(lab: Any, tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """`lxdproxy serve` in the lab host netns, state in <tmp>/st, API socket <tmp>/s; returns once
    the API answers."""
    sock = str(tmp / "s")
    proc = lab.host.popen([*lxdproxy_argv(), "serve", "--state-dir", str(tmp / "st"), "--socket",
                           sock, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            DaemonClient(sock, timeout=5).get("/1.0")
            return proc, sock
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
