"""The real lxdproxy daemon, run in the lab host netns, driven over its REST API (unix socket)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import baseline, procstat

REPO = Path(__file__).resolve().parents[1]


def daemon_available() -> str | None:
    """None when `lxdproxy serve` can run here, else the reason it cannot."""
    try:
        if importlib.util.find_spec("lxdproxy.cli.serve") is None:
            return "lxdproxy.cli.serve (the `lxdproxy serve` command) is not importable yet"
    except ImportError as exc:
        return f"lxdproxy daemon not importable: {exc}"
    return None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("lxd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DaemonError(RuntimeError):
    pass


class LxdproxyDaemon:
    """`lxdproxy serve --state-dir <tmp>` started with lab.host.popen, so its own netns is the lab host
    (its listeners and its NAT table live there, never in the machine's namespace)."""

    def __init__(self, lab: Any, *, label: str = "bench", extra_args: tuple[str, ...] = (),
                 source: Path | None = None) -> None:
        self.lab = lab
        self.extra_args = list(extra_args)  # e.g. ("--workers", "0")
        # Another checkout's lxdproxy package (benchmarks.baseline), run with this venv's packages;
        # its workers inherit the environment, so they run that code too.
        self.source = source
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"lxdproxy-{label}-"))
        self.socket_path = str(self.state_dir / "unix.socket")
        self.log_path = self.state_dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        from lab.daemon import start_in_lab_host  # the one way tests start it too

        argv = [sys.executable, "-m", "lxdproxy.cli", "serve", "--state-dir", str(self.state_dir),
                *self.extra_args]
        try:
            options = baseline.process_options(self.source) if self.source is not None else {}
            self.proc = start_in_lab_host(self.lab, argv, self.log_path, timeout, **options)
        except RuntimeError as exc:
            raise DaemonError(str(exc)) from None

    def stop(self) -> None:
        """``lxdproxy shutdown``: devices and workers gone (a SIGTERM would only detach)."""
        from lab.daemon import shutdown_daemon

        if self.proc is not None:
            try:
                shutdown_daemon(self.proc, self.socket_path)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def kill9(self) -> None:
        """SIGKILL the control plane (the workers, in their own session, are not signalled)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def reload(self, timeout: float = 60.0) -> None:
        """``lxdproxy reload``: new workers take the listeners, the old ones drain."""
        done = subprocess.run([sys.executable, "-m", "lxdproxy.cli", "reload", "--socket",
                               self.socket_path, "--timeout", str(timeout)],
                              capture_output=True, timeout=timeout + 5)
        if done.returncode != 0:
            raise DaemonError(f"lxdproxy reload failed ({done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()[-300:]}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        """The control plane and its data-plane workers."""
        from lab.daemon import worker_pids

        return [self.pid, *worker_pids(self.state_dir)]

    def memory_kib(self) -> dict[str, int]:
        return procstat.memory_kib(self.pids())

    # -- REST ------------------------------------------------------------------------------------
    def request_raw(self, method: str, path: str, timeout: float = 60) -> tuple[int, bytes]:
        """A request whose answer is not JSON (``/1.0/metrics``): status and body."""
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """A request that must succeed; waits for the operation when the answer is async (202)."""
        status, doc = self.request(method, path, body, timeout)
        if status not in (200, 201, 202) or (doc or {}).get("type") == "error":
            raise DaemonError(f"{method} {path} -> {status}: {(doc or {}).get('error')}")
        if status == 202 and doc.get("operation"):
            op_id = doc["operation"].rsplit("/", 1)[-1].split("?")[0]
            st, op = self.request("GET", f"/1.0/operations/{op_id}/wait?timeout={int(timeout)}",
                                  timeout=timeout + 5)
            meta = (op or {}).get("metadata") or {}
            if st != 200 or meta.get("status") != "Success":
                raise DaemonError(f"{method} {path}: operation failed: {meta.get('err') or op}")
        return doc

    def add_instance(self, name: str, inst: Any) -> None:
        self.call("POST", "/1.0/instances", {
            "name": name,
            "type": "container",
            "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)},
            "devices": {"eth0": {"type": "nic", "nictype": "bridged", "parent": "br0", "name": "eth0",
                                 "ipv4.address": inst.ipv4, "ipv6.address": inst.ipv6}},
        })

    def patch_devices(self, name: str, devices: dict[str, dict[str, str] | None]) -> None:
        """LXD PATCH semantics: merged by device name; None deletes that device."""
        self.call("PATCH", f"/1.0/instances/{name}", {"devices": devices})
