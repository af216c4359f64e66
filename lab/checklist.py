"""The LXD acceptance checklist's driver (spec §7, LXD's test/suites/container_devices_proxy.sh)
run the way an external judge would: the real daemon inside ``lab.host``, instances registered
with ``POST /1.0/instances``, devices driven by the real ``lxc`` 5.0.2 client.

Everything here talks to the daemon over its socket or through ``lxc``; nothing imports lxdproxy.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.daemon import shutdown_daemon, start_in_lab_host

REPO = Path(__file__).resolve().parents[1]
# Override to run the checklist against another build (e.g. a mutated copy, to see it go red).
LXDPROXY = Path(os.environ.get("LXDPROXY_CHECKLIST_BIN") or REPO / ".venv" / "bin" / "lxdproxy")
LXC = "/usr/bin/lxc"
LOOP4 = "127.0.0.1"

# Ports used inside lab.host (a fresh netns per test, so fixed numbers never collide).
P, P2, P3, PU = 7001, 7002, 7003, 7004


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("lxd", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


class Daemon:
    """``lxdproxy serve`` inside lab.host, plus the ``lxc`` client pointed at it."""

    def __init__(self, lab: Any, tmp: Path, nft_table: str | None = None) -> None:
        self.lab = lab
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.socket = tmp / "lxdproxy.sock"
        self.conf = tmp / "lxc-conf"
        self.log = tmp / "daemon.log"
        self.nft_table = nft_table or "lxdproxy"
        self._argv = [str(LXDPROXY), "serve", "--state-dir", str(self.state_dir),
                      "--socket", str(self.socket)]
        if nft_table:
            self._argv += ["--nft-table", nft_table]
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Daemon:
        # An existing $LXD_CONF/config.yml: lxc skips its first-run banner ("If this is your
        # first time running LXD...") on stderr, so error output is only the `Error: ...` line.
        self.conf.mkdir(parents=True, exist_ok=True)
        (self.conf / "config.yml").write_text("default-remote: local\n")
        self.proc = start_in_lab_host(self.lab, self._argv, self.log, timeout)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        return shutdown_daemon(self.proc, self.socket)

    # -- REST ---------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        conn = _UnixHTTPConnection(str(self.socket))
        try:
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            out = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if out.get("type") == "async":  # wait like a client does
            op = out["metadata"]["id"]
            _, waited = self.api("GET", f"/1.0/operations/{op}/wait?timeout=30")
            return resp.status, waited
        return resp.status, out

    def register(self, name: str, inst: Any, *, nic: bool = True) -> None:
        """LXD ``lxc launch`` equivalent for the local backend: an existing process."""
        devices: dict[str, dict[str, str]] = {}
        if nic:
            devices["eth0"] = {"type": "nic", "nictype": "bridged", "parent": "br0",
                               "ipv4.address": inst.ipv4, "ipv6.address": inst.ipv6}
        status, out = self.api("POST", "/1.0/instances", {
            "name": name, "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)}, "devices": devices})
        assert (out.get("metadata") or {}).get("status") == "Success", (status, out)

    def state(self, name: str) -> dict[str, Any]:
        return self.api("GET", f"/1.0/instances/{name}/state")[1]["metadata"]

    def restart(self, name: str, inst: Any) -> None:
        """``lxc restart -f`` for a local instance: the lab restarts the process (new PID, same
        addresses), then the user points the instance at its new PID — the local backend anchors
        an instance on ``user.lxdproxy.pid`` (lxdproxy/instances/local.py), it cannot guess the
        successor of a process it does not own. Devices are re-created asynchronously."""
        old = inst.pid
        stop_servers(inst)  # a restart ends every process of the container, servers included
        inst.restart()
        assert inst.pid != old
        self.lxc("config", "set", name, "user.lxdproxy.pid", str(inst.pid))

    def set_stored_device_key(self, instance: str, device: str, key: str, value: str) -> None:
        """Checklist A7 ("rewrite the stored connect in the DB"): edit the daemon's SQLite store
        behind its back, like LXD's test does with ``lxd sql global``."""
        db = sqlite3.connect(self.state_dir / "lxdproxy.db", timeout=10)
        try:
            (raw,) = db.execute("SELECT config FROM devices WHERE instance=? AND name=?",
                                (instance, device)).fetchone()
            cfg = json.loads(raw)
            cfg[key] = value
            db.execute("UPDATE devices SET config=? WHERE instance=? AND name=?",
                       (json.dumps(cfg), instance, device))
            db.commit()
        finally:
            db.close()

    # -- lxc ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, "LXD_CONF": str(self.conf), "LXD_SOCKET": str(self.socket)}

    def lxc(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([LXC, *args], env=self.env(), capture_output=True, text=True,
                              timeout=60)
        if ok:
            assert proc.returncode == 0, f"lxc {' '.join(args)}: {proc.stderr}"
        return proc

    def lxc_error(self, *args: str) -> str:
        """Run a command that must fail; return what lxc printed (``Error: ...``)."""
        proc = self.lxc(*args, ok=False)
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
        return proc.stderr.strip()

    def add(self, inst: str, dev: str, *kv: str) -> None:
        out = self.lxc("config", "device", "add", inst, dev, "proxy", *kv)
        assert out.stdout.strip() == f"Device {dev} added to {inst}"

    def remove(self, inst: str, dev: str) -> None:
        out = self.lxc("config", "device", "remove", inst, dev)
        assert out.stdout.strip() == f"Device {dev} removed from {inst}"

    # -- nftables (in lab.host, where the daemon runs) ----------------------------------------

    def ruleset(self) -> str:
        return self.lab.host.run(["nft", "list", "ruleset"], text=True).stdout

    def chain_rules(self, chain: str) -> list[str] | None:
        """Rule lines of chain ``chain`` in our table (None = no such chain)."""
        return chain_rules(self.ruleset(), self.nft_table, chain)


def chain_rules(ruleset: str, table: str, chain: str) -> list[str] | None:
    in_table = False
    rules: list[str] | None = None
    for line in ruleset.splitlines():
        text = line.strip()
        if line.startswith("table "):
            in_table = line.split()[1:3] == ["inet", table]
            continue
        if not in_table:
            continue
        if text == f"chain {chain} {{":
            rules = []
        elif rules is not None:
            if text == "}":
                return rules
            if text and not text.startswith("type "):
                rules.append(text)
    return rules


def nat_chains(daemon: Daemon, label: str) -> dict[str, list[str] | None]:
    rs = daemon.ruleset()
    return {c: chain_rules(rs, daemon.nft_table, f"{c}.{label}") for c in ("prert", "out", "pstrt")}


# -- traffic -----------------------------------------------------------------------------------

def _retry(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stream_echo(sock: socket.socket, addr: Any, payload: bytes, *, until_eof: bool) -> bytes:
    try:
        sock.settimeout(10)
        sock.connect(addr)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # like `nc -N`: half-close, then read the answer
        data = b""
        while len(data) < len(payload) or until_eof:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


def tcp_echo(lab: Any, port: int, payload: bytes = b"checklist\n", host: str = LOOP4,
             *, until_eof: bool = True, retry: bool = True) -> bytes:
    """Client in lab.host -> proxy listener. ``until_eof``: the reply must also end with EOF
    (half-close propagated both ways, checklist B4 ``nc -N``)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET

    def once() -> bytes:
        return _stream_echo(lab.host.socket(fam, socket.SOCK_STREAM), (host, port), payload,
                            until_eof=until_eof)

    return _retry(once) if retry else once()


def unix_echo(path: Path | str, payload: bytes = b"checklist\n", *, until_eof: bool = True,
              retry: bool = True) -> bytes:
    # Host unix sockets live in the test's own mount namespace (lab.host is only a netns).
    def once() -> bytes:
        return _stream_echo(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), str(path),
                            payload, until_eof=until_eof)

    return _retry(once) if retry else once()


def udp_echo(lab: Any, port: int, payload: bytes = b"checklist\n", host: str = LOOP4,
             timeout: float = 10.0) -> bytes:
    """Send a datagram until one comes back (the listener may still be coming up)."""
    sock = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.sendto(payload, (host, port))
            try:
                return sock.recv(65536)
            except OSError:  # timeout, or ICMP port unreachable before the listener is up
                if time.monotonic() > deadline:
                    raise
    finally:
        sock.close()


def refused(lab: Any, port: int, host: str = LOOP4) -> bool:
    try:
        tcp_echo(lab, port, host=host, retry=False)
    except ConnectionRefusedError:
        return True
    return False


def eventually(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


_SERVERS: dict[int, list[Any]] = {}


def echo_server(lab: Any, inst: Any, proto: str, addr: str, *ports: int, **opts: Any) -> Any:
    """socat ... exec:/bin/cat inside the container, as LXD's test does (umask 0000 for unix)."""
    proc = lab.echo(inst, proto, addr, *ports, **opts)
    _SERVERS.setdefault(id(inst), []).append(proc)
    return proc


def stop_servers(inst: Any) -> None:
    """Kill the echo servers started in ``inst``: they were started with nsenter, so they would
    otherwise outlive its init and keep the old namespaces answering after a restart."""
    for proc in _SERVERS.pop(id(inst), []):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def until(fn: Any, expected: Any, timeout: float = 10.0) -> Any:
    """Call ``fn`` until it returns ``expected`` (devices follow a restart or a change
    asynchronously); returns the last result or raises the last OSError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except OSError:
            if time.monotonic() > deadline:
                raise
        else:
            if got == expected or time.monotonic() > deadline:
                return got
        time.sleep(0.05)
