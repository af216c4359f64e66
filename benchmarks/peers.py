"""The things we compare. Each peer exposes where a client connects for the bulk/UDP (iperf3) and
echo workloads, which processes do its forwarding (for CPU/GiB), and how to add one more forward
for the device-add latency workload.

Addresses: proxies listen on the lab host's bridge address (198.18.0.1), one port block per peer, so
every peer is up at once and runs can be interleaved. forkproxy and lxdproxy (non-NAT) connect to
127.0.0.1:<port> *inside* the instance, the usual LXD setup; NAT must target the instance NIC address;
socat cannot enter a namespace, so it connects from the host to the instance address over the bridge.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.daemon import LxdproxyDaemon
from benchmarks.env import ECHO_PORT, IPERF_PORT, BenchEnv

LXD = "/usr/bin/lxd"
INSTANCE_NAME = "bench"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


class Peer:
    name = ""
    in_kernel = False  # no userspace forwarding process: CPU/GiB is not attributable
    adds_forwards = True  # the device-add workload applies

    def __init__(self, env: BenchEnv, base_port: int, *, iperf_port: int = IPERF_PORT) -> None:
        self.env = env
        self.base_port = base_port
        self.iperf_port = iperf_port  # this peer's own iperf3 server in the instance
        self.listen_ip = env.host.ipv4

    @property
    def bulk(self) -> Endpoint:
        return Endpoint(self.listen_ip, self.base_port + 1)

    @property
    def echo(self) -> Endpoint:
        return Endpoint(self.listen_ip, self.base_port + 2)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def cpu_pids(self) -> list[int]:
        return []

    # device-add latency: add a forward of listen_ip:port -> echo server; return time.monotonic()
    # taken just before the add was asked for.
    def add_forward(self, index: int, port: int) -> float:
        raise NotImplementedError

    def remove_forward(self, index: int, port: int) -> None:
        pass


class Direct(Peer):
    name = "direct"
    in_kernel = True
    adds_forwards = False

    @property
    def bulk(self) -> Endpoint:
        return Endpoint(self.env.inst.ipv4, self.iperf_port)

    @property
    def echo(self) -> Endpoint:
        return Endpoint(self.env.inst.ipv4, ECHO_PORT)

    def start(self) -> None:
        pass


class _Processes(Peer):
    """A peer made of one process per forward, started by us (not the lab) so we stop them too."""

    def __init__(self, env: BenchEnv, base_port: int, **kw: Any) -> None:
        super().__init__(env, base_port, **kw)
        self.procs: list[subprocess.Popen[Any]] = []
        self.extra: dict[int, subprocess.Popen[Any]] = {}

    def stop(self) -> None:
        for proc in [*self.procs, *self.extra.values()]:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        self.extra.clear()

    def cpu_pids(self) -> list[int]:
        return [p.pid for p in self.procs]


class Socat(_Processes):
    """socat in fork mode with a 128 KiB buffer (-b 131072), in the lab host."""

    name = "socat"

    def _spawn(self, proto: str, port: int, target_port: int) -> subprocess.Popen[Any]:
        inst_ip = self.env.inst.ipv4
        if proto == "tcp":
            argv = ["socat", "-b", "131072",
                    f"TCP-LISTEN:{port},bind={self.listen_ip},fork,reuseaddr,backlog=4096",
                    f"TCP:{inst_ip}:{target_port}"]
        else:  # one child per client address; -T reaps idle children between runs
            argv = ["socat", "-b", "131072", "-T", "5",
                    f"UDP-LISTEN:{port},bind={self.listen_ip},fork,reuseaddr",
                    f"UDP:{inst_ip}:{target_port}"]
        return self.env.host.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.procs = [self._spawn("tcp", self.bulk.port, self.iperf_port),
                      self._spawn("udp", self.bulk.port, self.iperf_port),
                      self._spawn("tcp", self.echo.port, ECHO_PORT)]
        self.env.wait_listening(self.env.host, "tcp", self.bulk.port, 10)
        self.env.wait_listening(self.env.host, "udp", self.bulk.port, 10)
        self.env.wait_listening(self.env.host, "tcp", self.echo.port, 10)

    def add_forward(self, index: int, port: int) -> float:
        t0 = time.monotonic()
        self.extra[port] = self._spawn("tcp", port, ECHO_PORT)
        return t0

    def remove_forward(self, index: int, port: int) -> None:
        proc = self.extra.pop(port)
        proc.kill()
        proc.wait(timeout=10)


FLOOR_SOURCE = Path(__file__).parent / "floor" / "tcp_floor.c"


def floor_unavailable() -> str | None:
    return None if shutil.which("gcc") else "gcc is absent (the C floor is compiled at start)"


class Floor(_Processes):
    """A floor reference: one process forwarding the echo port only (benchmarks/floor/). Only the
    echo workloads (connection rate, latency) apply; it answers "what does a forwarder making these
    system calls cost on this machine", which bounds the connection-rate targets."""

    adds_forwards = False
    WORKLOADS = ("connrate_2", "connrate_4", "latency")

    def spawn(self, args: list[str]) -> subprocess.Popen[Any]:
        raise NotImplementedError

    def start(self) -> None:
        proc = self.spawn([self.listen_ip, str(self.echo.port), f"/proc/{self.env.inst.pid}/ns/net",
                           "127.0.0.1", str(ECHO_PORT)])
        self.procs = [proc]
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"listening":
            raise RuntimeError(f"{self.name} did not start (exit {proc.poll()})")


class CFloor(Floor):
    """benchmarks/floor/tcp_floor.c: one thread, one edge-triggered epoll, every fd registered
    once, no user-space work beyond the system calls."""

    name = "c-floor"

    def __init__(self, env: BenchEnv, base_port: int, **kw: Any) -> None:
        super().__init__(env, base_port, **kw)
        self.bindir = Path(tempfile.mkdtemp(prefix="lxdproxy-bench-floor-"))

    def spawn(self, args: list[str]) -> subprocess.Popen[Any]:
        binary = self.bindir / "tcp_floor"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOR_SOURCE)], check=True,
                       capture_output=True, timeout=120)
        return self.env.host.popen([str(binary), *args], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.bindir, ignore_errors=True)


class PyFloor(Floor):
    """benchmarks/floor/py_floor.py: the leanest uvloop forwarder (fd callbacks, no task per
    connection): what Python itself costs per connection here."""

    name = "py-floor"

    def spawn(self, args: list[str]) -> subprocess.Popen[Any]:
        return self.env.host_python("benchmarks.floor.py_floor", *args)


class Forkproxy(_Processes):
    """LXD's own forwarder, run directly (no LXD daemon): `lxd forkproxy -- <listen-pid> -1 <listen>
    <connect-pid> -1 <connect> "" "" 0644 "" "" ""`. The listen pid is a `sleep` in the lab host netns,
    the connect pid is the instance's init. It forks: the short-lived child binds in the listen netns
    and passes the fd back; the process we started is the long-lived forwarder."""

    name = "forkproxy"

    def __init__(self, env: BenchEnv, base_port: int, **kw: Any) -> None:
        super().__init__(env, base_port, **kw)
        self.anchor: subprocess.Popen[Any] | None = None
        self.logdir = Path(tempfile.mkdtemp(prefix="lxdproxy-bench-forkproxy-"))

    def _anchor_pid(self) -> int:
        if self.anchor is None:
            self.anchor = self.env.host.popen(["sleep", "infinity"], stdin=subprocess.DEVNULL)
            # `ip netns exec` execs sleep in place: wait until the pid really is the sleep
            deadline = time.monotonic() + 5
            while Path(f"/proc/{self.anchor.pid}/comm").read_text().strip() != "sleep":
                if time.monotonic() > deadline:
                    raise RuntimeError("anchor process in the lab host never became `sleep`")
                time.sleep(0.01)
        return self.anchor.pid

    def argv(self, listen: str, connect: str) -> list[str]:
        return [LXD, "forkproxy", "--", str(self._anchor_pid()), "-1", listen,
                str(self.env.inst.pid), "-1", connect, "", "", "0644", "", "", ""]

    def spawn(self, listen: str, connect: str, *, wait: bool = True) -> subprocess.Popen[Any]:
        argv = self.argv(listen, connect)
        log = self.logdir / f"{len(self.procs) + len(self.extra)}-{listen.replace(':', '_')}.log"
        with open(log, "wb") as out:  # a file, not a pipe: forkproxy writes a warning per failed dial
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        if wait:
            deadline = time.monotonic() + 10
            while "Status: Started" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"forkproxy {shlex.join(argv)} did not start: "
                                       f"{log.read_text(errors='replace')[-500:]}")
                time.sleep(0.01)
        return proc

    def start(self) -> None:
        ip = self.listen_ip
        self.procs = [
            self.spawn(f"tcp:{ip}:{self.bulk.port}", f"tcp:127.0.0.1:{self.iperf_port}"),
            self.spawn(f"udp:{ip}:{self.bulk.port}", f"udp:127.0.0.1:{self.iperf_port}"),
            self.spawn(f"tcp:{ip}:{self.echo.port}", f"tcp:127.0.0.1:{ECHO_PORT}"),
        ]

    def add_forward(self, index: int, port: int) -> float:
        t0 = time.monotonic()
        self.extra[port] = self.spawn(f"tcp:{self.listen_ip}:{port}", f"tcp:127.0.0.1:{ECHO_PORT}",
                                      wait=False)
        return t0

    def remove_forward(self, index: int, port: int) -> None:
        proc = self.extra.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        super().stop()
        if self.anchor is not None and self.anchor.poll() is None:
            self.anchor.kill()
            self.anchor.wait(timeout=10)
        for f in self.logdir.glob("*.log"):
            f.unlink()
        os.rmdir(self.logdir)


class Lxdproxy(Peer):
    """The real daemon (`lxdproxy serve` in the lab host), devices added through its REST API."""

    name = "lxdproxy"
    nat = False

    def __init__(self, env: BenchEnv, base_port: int, daemon: LxdproxyDaemon, **kw: Any) -> None:
        super().__init__(env, base_port, **kw)
        self.daemon = daemon
        # NAT needs the instance NIC address as the target (LXD's rule); non-NAT connects inside the
        # instance to loopback, the way LXD users write it.
        self.target_ip = env.inst.ipv4 if self.nat else "127.0.0.1"
        self.prefix = "nat" if self.nat else "fwd"

    def _device(self, proto: str, port: int, target_port: int) -> dict[str, str]:
        dev = {"type": "proxy", "listen": f"{proto}:{self.listen_ip}:{port}",
               "connect": f"{proto}:{self.target_ip}:{target_port}"}
        if self.nat:
            dev["nat"] = "true"
        return dev

    def start(self) -> None:
        p = self.prefix
        self.daemon.patch_devices(INSTANCE_NAME, {
            f"{p}-iperf-tcp": self._device("tcp", self.bulk.port, self.iperf_port),
            f"{p}-iperf-udp": self._device("udp", self.bulk.port, self.iperf_port),
            f"{p}-echo": self._device("tcp", self.echo.port, ECHO_PORT),
        })

    def cpu_pids(self) -> list[int]:
        return [] if self.nat else self.daemon.pids()

    def add_forward(self, index: int, port: int) -> float:
        t0 = time.monotonic()
        self.daemon.patch_devices(INSTANCE_NAME,
                                  {f"{self.prefix}-add{index}": self._device("tcp", port, ECHO_PORT)})
        return t0

    def remove_forward(self, index: int, port: int) -> None:
        self.daemon.patch_devices(INSTANCE_NAME, {f"{self.prefix}-add{index}": None})


class LxdproxyBaseline(Lxdproxy):
    """An earlier commit's lxdproxy (``scripts/bench --baseline REV``), in a daemon of its own."""

    name = "lxdproxy-base"


class LxdproxyNat(Lxdproxy):
    name = "lxdproxy-nat"
    nat = True
    in_kernel = True
