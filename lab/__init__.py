"""The network lab: throwaway topologies in network namespaces, built with pyroute2.

Topology::

    lab.host (named netns)  br0 = 198.18.0.1/24, fd42::1/64, forwarding on
      ├── veth ── instance 1 (own net + mount ns, private tmpfs /tmp): 198.18.0.11, fd42::11
      ├── veth ── instance 2 ...
      └── veth (routed, not bridged) ── client 1 (own netns): 198.19.1.2/24 via 198.19.1.1,
                                                               fd42:0:0:1::2/64 via fd42:0:0:1::1

Nothing is created in the machine's own network namespace. Every process and namespace is removed
by ``Lab.close()``, which the ``lab`` fixture always calls.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from lxdproxy.netns import Namespaces, netns_executor, ns_identity, release_netns_executor

REPO = Path(__file__).resolve().parents[1]
HOST_V4, HOST_V6 = "198.18.0.1", "fd42::1"


def _under_tmp(path: Path) -> bool:
    return path == Path("/tmp") or Path("/tmp") in path.parents


def _off_loop(fn: Any, *args: Any) -> Any:
    """Run a pyroute2 call in a plain thread: pyroute2 0.9 drives its own asyncio loop, which
    cannot run inside a test's already running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def _wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), True)
    import select

    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            line = proc.stdout.readline()
            if b"READY" in line or b"ready" in line:
                return
            if not line:
                break
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{what} did not become ready (exit {proc.poll()})")


class _Place:
    """Something with a network namespace that tests can run things in."""

    lab: Lab
    namespaces: Namespaces
    ipv4: str
    ipv6: str

    def _enter_argv(self) -> list[str]:
        raise NotImplementedError

    def run(self, argv: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[Any]:
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 30)
        return subprocess.run(self._enter_argv() + argv, check=check, **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self._enter_argv() + argv, **kw)
        self.lab._procs.append(proc)
        return proc

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        sock = netns_executor(self.namespaces.net).socket(family, type)
        sock.setblocking(True)
        sock.settimeout(10)
        return sock

    def python(self, module: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """Run a standard-library-only module or script (``x.py`` path) with Debian's python3."""
        # Lab scripts are standard library only. Debian's python3 stays executable for the mapped
        # root of a user-namespaced instance, which cannot read /root/.pyenv or the venv.
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        target = [module] if module.endswith(".py") else ["-m", module]
        return self.popen([python, *target, *args], env=env, **kw)


class LabHost(_Place):
    def __init__(self, lab: Lab, name: str) -> None:
        self.lab, self.name = lab, name
        self.path = f"/run/netns/{name}"
        self.namespaces = Namespaces.of_netns(name)
        self.ipv4, self.ipv6 = HOST_V4, HOST_V6

    def _enter_argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class LabInstance(_Place):
    """A real process with its own network and mount namespaces (and optionally a user namespace)."""

    def __init__(self, lab: Lab, name: str, index: int, userns: bool) -> None:
        self.lab, self.name, self.index, self.userns = lab, name, index, userns
        self.ipv4, self.ipv6 = f"198.18.0.{index}", f"fd42::{index}"
        self.veth_host = f"vi{index}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _start(self) -> None:
        argv = ["unshare", "--net", "--mount", "--propagation", "private"]
        if self.userns:
            argv[1:1] = ["--user", "--map-users=100000,0,65536", "--map-groups=100000,0,65536",
                         "--setuid=0", "--setgid=0"]
        # No --fork: unshare execs the shell inside the new namespaces, so Popen.pid is the init.
        script = "mount -t tmpfs -o mode=1777 tmpfs /tmp"
        if _under_tmp(REPO):
            # The private /tmp would hide a checkout living under /tmp (lab scripts, the venv):
            # keep a handle on it from before the mount and bind it back at the same path
            # (--no-canonicalize: mount must not resolve the fd link to the now hidden path).
            repo = shlex.quote(str(REPO))
            script = (f"exec 9<{repo} && {script} && mkdir -p {repo} && "
                      f"mount --no-canonicalize --bind /proc/self/fd/9 {repo} && exec 9<&-")
        script += " && echo READY && exec sleep infinity"
        self.proc = subprocess.Popen(argv + ["sh", "-c", script], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        _wait_ready(self.proc, f"instance {self.name}")
        self.namespaces = Namespaces.of_pid(self.proc.pid)
        _off_loop(self.lab._attach, self)

    def _enter_argv(self) -> list[str]:
        argv = ["nsenter", "-t", str(self.pid), "-n", "-m"]
        if self.userns:
            argv += ["-U"]
        return argv

    def restart(self) -> None:
        """Kill the init and start a new one with the same addresses (like `lxc restart -f`)."""
        self._kill()
        self._start()

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            release_netns_executor(self.namespaces.net)
            self.proc.kill()
            self.proc.wait()


class LabClient(_Place):
    """A plain netns routed (not bridged) through lab.host, for NAT tests that need a real client."""

    def __init__(self, lab: Lab, name: str, index: int) -> None:
        self.lab, self.name, self.index = lab, name, index
        self.path = f"/run/netns/{name}"
        self.ipv4, self.ipv6 = f"198.19.{index}.2", f"fd42:0:0:{index}::2"
        self.gateway_v4, self.gateway_v6 = f"198.19.{index}.1", f"fd42:0:0:{index}::1"
        self.veth_host = f"vc{index}"
        _off_loop(netns.create, name)
        self.namespaces = Namespaces.of_netns(name)
        _off_loop(lab._attach_client, self)

    def _enter_argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class Lab:
    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self._procs: list[subprocess.Popen[Any]] = []
        self.instances: list[LabInstance] = []
        self.clients: list[LabClient] = []
        self._netns_names: list[str] = []
        self._next_index = 11
        name = f"lxplab-{self.tag}-h"
        _off_loop(netns.create, name)
        self._netns_names.append(name)
        try:
            self.host = LabHost(self, name)
            _off_loop(self._build_host, name)
            self._sysctl(self.host.path, {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
        except BaseException:
            self.close()
            raise

    def _build_host(self, name: str) -> None:
            with NetNS(name) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.link("add", ifname="br0", kind="bridge")
                br = ns.link_lookup(ifname="br0")[0]
                ns.addr("add", index=br, address=HOST_V4, prefixlen=24)
                ns.addr("add", index=br, address=HOST_V6, prefixlen=64, flags=0x02)  # IFA_F_NODAD
                ns.link("set", index=br, state="up")

    def _sysctl(self, net_path: str, values: dict[str, str]) -> None:
        # /proc/sys/net is per network namespace: write it from a thread inside that netns.
        def write() -> None:
            for key, value in values.items():
                Path("/proc/sys", key).write_text(value)

        netns_executor(net_path).call(write)

    # -- building --------------------------------------------------------------------------------
    def add_instance(self, name: str | None = None, userns: bool = False) -> LabInstance:
        index = self._next_index
        self._next_index += 1
        inst = LabInstance(self, name or f"c{index}", index, userns)
        self.instances.append(inst)
        return inst

    def add_client(self, name: str | None = None) -> LabClient:
        index = len(self.clients) + 1
        client = LabClient(self, name or f"lxplab-{self.tag}-c{index}", index)
        self._netns_names.append(client.name)
        self.clients.append(client)
        return client

    def _attach(self, inst: LabInstance) -> None:
        with NetNS(self.host.name) as ns:
            old = ns.link_lookup(ifname=inst.veth_host)
            if old:  # restart: the old veth dies with the old namespace, but be sure
                try:
                    ns.link("del", index=old[0])
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:  # gone between the lookup and the del
                        raise
            ns.link("add", ifname=inst.veth_host, kind="veth", peer={"ifname": "eth0", "net_ns_pid": inst.pid})
            idx = ns.link_lookup(ifname=inst.veth_host)[0]
            ns.link("set", index=idx, master=ns.link_lookup(ifname="br0")[0], state="up")
        with NetNS(inst.namespaces.net) as ins:
            ins.link("set", index=ins.link_lookup(ifname="lo")[0], state="up")
            eth = ins.link_lookup(ifname="eth0")[0]
            ins.addr("add", index=eth, address=inst.ipv4, prefixlen=24)
            ins.addr("add", index=eth, address=inst.ipv6, prefixlen=64, flags=0x02)
            ins.link("set", index=eth, state="up")
            ins.route("add", dst="0.0.0.0/0", gateway=HOST_V4)
            ins.route("add", dst="::/0", gateway=HOST_V6, family=socket.AF_INET6)

    def _attach_client(self, client: LabClient) -> None:
        with NetNS(self.host.name) as ns:
            ns.link("add", ifname=client.veth_host, kind="veth", peer={"ifname": "eth0", "net_ns_fd": client.path})
            idx = ns.link_lookup(ifname=client.veth_host)[0]
            ns.addr("add", index=idx, address=client.gateway_v4, prefixlen=24)
            ns.addr("add", index=idx, address=client.gateway_v6, prefixlen=64, flags=0x02)
            ns.link("set", index=idx, state="up")
        with NetNS(client.name) as cns:
            cns.link("set", index=cns.link_lookup(ifname="lo")[0], state="up")
            eth = cns.link_lookup(ifname="eth0")[0]
            cns.addr("add", index=eth, address=client.ipv4, prefixlen=24)
            cns.addr("add", index=eth, address=client.ipv6, prefixlen=64, flags=0x02)
            cns.link("set", index=eth, state="up")
            cns.route("add", dst="0.0.0.0/0", gateway=client.gateway_v4)
            cns.route("add", dst="::/0", gateway=client.gateway_v6, family=socket.AF_INET6)

    # -- helpers ---------------------------------------------------------------------------------
    def echo(self, where: _Place, proto: str, addr: str, *ports: int | str, **opts: Any) -> subprocess.Popen[Any]:
        """Start lab.echo in ``where`` and wait until it listens."""
        args = [proto, addr, *map(str, ports)]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (False, None):
                args += [flag, str(value)]
        proc = where.python(str(REPO / "lab" / "echo.py"), *args, stdout=subprocess.PIPE)
        _wait_ready(proc, f"echo {proto} {addr} {ports}")
        return proc

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for inst in self.instances:
            inst._kill()
        self._kill_stragglers()
        for name in reversed(self._netns_names):
            release_netns_executor(f"/run/netns/{name}")
            try:
                _off_loop(netns.remove, name)
            except OSError:
                pass

    def _kill_stragglers(self) -> None:
        """End what still runs inside the lab's own network namespaces: only the lab's tests
        started processes there (e.g. data-plane workers, which outlive the daemon that
        spawned them by design, when a test did not shut that daemon down)."""
        ours = set()
        for name in self._netns_names:
            try:
                ours.add(ns_identity(f"/run/netns/{name}"))
            except OSError:
                pass
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if ns_identity(f"/proc/{entry}/ns/net") not in ours:
                    continue
                os.kill(int(entry), 9)
            except (OSError, ProcessLookupError):
                continue
            print(f"lab: killed leftover process {entry} in the lab's namespaces", file=sys.stderr)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
