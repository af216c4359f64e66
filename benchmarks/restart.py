"""The restart workload: traffic that watches for an outage while the forwarder's controlling
process is killed and restarted, or its workers replaced.

A client in the lab host (``benchmarks.clients restart``) opens a connection every 20 ms (connect,
64 B request/response, close) and echoes 64 B every 20 ms on one held connection. Scenarios:

- ``lxdproxy/kill9``: ``kill -9`` of the control plane (default workers), then ``lxdproxy serve``
  again on the same state dir; the event ends when the new control plane says it listens.
- ``lxdproxy/reload``: ``lxdproxy reload`` (new workers take the listeners, the old ones drain).
- ``lxdproxy-workers0/kill9``: the same kill -9 + restart with ``--workers 0`` (in-process
  forwarding): the contrast, an outage.
- ``forkproxy/kill9-parent``: a real ``lxd forkproxy`` started by a parent process (standing in
  for LXD); ``kill -9`` of the parent. forkproxy itself is left alone, as in an LXD restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.daemon import DaemonError, LxdproxyDaemon
from benchmarks.env import ECHO_PORT, BenchEnv, wait_line
from benchmarks.peers import Forkproxy
from benchmarks.sizes import Sizes

INTERVAL = 0.02
BASE_PORT = 15000
# The parent standing in for LXD: starts forkproxy (stdout/stderr inherited: the log) and waits.
_PARENT = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
SCENARIOS = ("lxdproxy/kill9", "lxdproxy/reload", "lxdproxy-workers0/kill9", "forkproxy/kill9-parent")


def measure(env: BenchEnv, port: int, event: Callable[[], None], sizes: Sizes) -> dict[str, Any]:
    """Traffic through ``env.host.ipv4:port`` for restart_before_seconds, then ``event()``, then
    restart_after_seconds more; the client's counts plus how long the event took."""
    client = env.host_python("benchmarks.clients", "restart", env.host.ipv4, str(port),
                             "--interval", str(INTERVAL), "--max-seconds", "300",
                             stdin=subprocess.PIPE)
    try:
        wait_line(client, "READY", 15, "restart client")
        time.sleep(sizes.restart_before_seconds)
        t0 = time.monotonic()
        event()
        event_s = time.monotonic() - t0
        time.sleep(sizes.restart_after_seconds)
        out, _ = client.communicate(b"stop\n", timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    res = json.loads(out.decode().strip().splitlines()[-1])
    if "error" in res:
        raise RuntimeError(f"restart client: {res['error']}")
    return {**res, "event_s": event_s}


class ParentedForkproxy:
    """One forkproxy whose parent is a process of its own, so that parent can be killed."""

    def __init__(self, env: BenchEnv, port: int) -> None:
        self.env, self.port = env, port
        self.fp = Forkproxy(env, port)  # for its anchor process in the lab host and its log dir
        self.parent: subprocess.Popen[Any] | None = None
        self.forkproxy_pid: int | None = None

    def start(self) -> None:
        argv = [*self.fp.argv(f"tcp:{self.env.host.ipv4}:{self.port}", f"tcp:127.0.0.1:{ECHO_PORT}")]
        log = self.fp.logdir / f"parented-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            self.parent = subprocess.Popen([sys.executable, "-c", _PARENT, *argv], stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "Status: Started" not in log.read_text(errors="replace"):
            if self.parent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"parented forkproxy did not start: {log.read_text()[-300:]}")
            time.sleep(0.01)
        kids = procstat.tree(self.parent.pid)[1:]
        if not kids:
            raise RuntimeError("forkproxy's parent has no child")
        self.forkproxy_pid = kids[0]

    def kill_parent(self) -> None:
        assert self.parent is not None
        self.parent.kill()
        self.parent.wait(timeout=10)

    def stop(self) -> None:
        """Kill forkproxy (no longer our child once its parent is gone: wait until it is dead)."""
        if self.parent is not None and self.parent.poll() is None:
            self.kill_parent()
        if self.forkproxy_pid is not None:
            _kill_and_wait(self.forkproxy_pid)
            self.forkproxy_pid = None

    def close(self) -> None:
        self.stop()
        self.fp.stop()


def _kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):  # dead; reaped by whoever adopted it
            return
        time.sleep(0.01)


def restart(env: BenchEnv, sizes: Sizes, *, lxdproxy: bool = True,
            forkproxy: bool = True) -> dict[str, Any]:
    """Every scenario restart_trials times, interleaved; scenario -> list of trial results."""
    out: dict[str, Any] = {"trials": {}, "notes": {}}
    daemons: dict[str, LxdproxyDaemon] = {}
    fp: ParentedForkproxy | None = None
    try:
        scenarios: dict[str, tuple[int, Callable[[], None]]] = {}
        if lxdproxy:
            for i, (name, args) in enumerate((("lxdproxy", ()), ("lxdproxy-workers0", ("--workers", "0")))):
                daemon = daemons[name] = LxdproxyDaemon(env.lab, label=f"bench-{name}", extra_args=args)
                daemon.start()
                daemon.add_instance("restart", env.inst)
                port = BASE_PORT + 1 + i
                daemon.patch_devices("restart", {"echo": {
                    "type": "proxy", "listen": f"tcp:{env.host.ipv4}:{port}",
                    "connect": f"tcp:127.0.0.1:{ECHO_PORT}"}})

                def kill9(d: LxdproxyDaemon = daemon) -> None:
                    d.kill9()
                    d.start()

                scenarios[f"{name}/kill9"] = (port, kill9)
            scenarios["lxdproxy/reload"] = (BASE_PORT + 1, daemons["lxdproxy"].reload)
            try:
                daemons["lxdproxy-workers0"].reload()
                out["notes"]["lxdproxy-workers0/reload"] = "accepted"
            except DaemonError as exc:
                out["notes"]["lxdproxy-workers0/reload"] = str(exc)
        if forkproxy:
            fp = ParentedForkproxy(env, BASE_PORT + 3)
            scenarios["forkproxy/kill9-parent"] = (BASE_PORT + 3, fp.kill_parent)
        names = [s for s in SCENARIOS if s in scenarios]
        for trial in range(sizes.restart_trials):
            for name in names[trial % len(names):] + names[:trial % len(names)]:
                port, event = scenarios[name]
                if name.startswith("forkproxy"):
                    assert fp is not None
                    fp.stop()
                    fp.start()
                out["trials"].setdefault(name, []).append(measure(env, port, event, sizes))
    finally:
        if fp is not None:
            fp.close()
        for daemon in daemons.values():
            daemon.stop()
    return out
