"""UDP sessions spread over the workers by client address (workers/udp_groups.py), in the lab:
both workers carry sessions, a session never changes its source port at the target, a killed
worker moves only its own clients, and restarts and reloads keep the port forwarding."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.datagrams import UdpRecorder
from lab.devices import proxy
from lab.forwarding import started
from lab.waiting import process_alive, until
from lxdproxy.errors import DeviceStartError
from lxdproxy.workers import WorkerPool

pytestmark = pytest.mark.lab

LISTEN = ("127.0.0.1", 1234)
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: root may pass net.core.rmem_max
DEVICE = {"listen": "udp:127.0.0.1:1234", "connect": "udp:127.0.0.1:4321"}


async def _pool(pools: list[WorkerPool], state_dir: Path, **kw: object) -> WorkerPool:
    pool = WorkerPool(state_dir, workers=kw.pop("workers", 2), **kw)  # type: ignore[arg-type]
    await pool.open()
    pools.append(pool)
    return pool


class Clients:
    """``n`` UDP clients in the lab's host netns, each its own source port; the recorder at
    the target tells which source address each session's datagrams came from."""

    def __init__(self, lab: Lab, recorder: UdpRecorder, n: int,
                 address: tuple[str, int] = LISTEN) -> None:
        self.recorder = recorder
        self.address = address
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socks = [lab.host.socket(family, socket.SOCK_DGRAM) for _ in range(n)]
        for s in self.socks:
            s.settimeout(0.2)

    def _ask(self, i: int, tag: str, deadline: float) -> None:
        want = f"{i}:{tag}".encode()
        while True:
            self.socks[i].sendto(want, self.address)
            try:
                while self.socks[i].recv(2048) != want:
                    pass
                return
            except TimeoutError:
                assert time.monotonic() < deadline, f"client {i}: no answer to {tag}"

    async def round(self, tag: str, timeout: float = 5.0) -> float:
        """Every client asks until answered; returns how long the last one took."""
        t0 = time.monotonic()
        await asyncio.to_thread(lambda: [self._ask(i, tag, t0 + timeout)
                                         for i in range(len(self.socks))])
        return time.monotonic() - t0

    def peer(self, i: int, tag: str) -> tuple:
        """The target-side source of client ``i``'s last datagram tagged ``tag``."""
        want = f"{i}:{tag}".encode()
        return [peer for data, peer in self.recorder.seen if data == want][-1]

    def peers(self, tag: str) -> list[tuple]:
        return [self.peer(i, tag) for i in range(len(self.socks))]

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def recorder(lab: Lab) -> Iterator[UdpRecorder]:
    inst = lab.add_instance()
    rec = UdpRecorder(inst, "127.0.0.1", 4321)
    # Room for every burst the tests send: a loss here would be the recorder's, not ours.
    rec.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    rec.inst = inst  # type: ignore[attr-defined]
    yield rec
    rec.close()


async def _sessions(pool: WorkerPool) -> dict[int, int]:
    return {w["pid"]: w["udp_sessions"] for w in (await pool.stats()).per_worker
            if not w["draining"]}


async def _device(lab: Lab, pool: WorkerPool, recorder: UdpRecorder, **cfg: str
                  ) -> tuple[str, str]:
    return await started(pool, "u", proxy(**{**DEVICE, **cfg}), host=lab.host,
                         inst=recorder.inst)  # type: ignore[attr-defined]


async def test_sessions_spread_over_both_workers_each_from_one_source_in_order(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 64)
    await clients.round("hello")
    sessions = await _sessions(pool)
    assert sum(sessions.values()) == 64 and min(sessions.values()) > 0, sessions
    # A burst per client: every datagram of a session reaches the target from one source,
    # in the order sent.
    for i, s in enumerate(clients.socks):
        for n in range(10):
            s.sendto(f"{i}:b{n}".encode(), LISTEN)
    await until(lambda: sum(d.startswith(b"b", d.index(b":") + 1)
                                  for d, _p in recorder.seen) == 640)
    for i in range(64):
        mine = [(d, p) for d, p in recorder.seen if d.split(b":")[0] == str(i).encode()]
        assert {p for _d, p in mine} == {clients.peer(i, "hello")}, f"client {i} moved"
        assert [d for d, _p in mine][1:] == [f"{i}:b{n}".encode() for n in range(10)]
    assert len(set(clients.peers("hello"))) == 64
    clients.close()


async def test_a_killed_worker_moves_only_its_own_clients(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 64)
    await clients.round("before")
    before = clients.peers("before")
    sessions = await _sessions(pool)
    victim, survivor = sorted(sessions, key=lambda pid: sessions[pid])
    os.kill(victim, signal.SIGKILL)
    took = await clients.round("after")  # the victim's clients: answered again, by anyone
    assert took < 2.0, f"{took:.2f} s before every client was answered again"
    moved = [i for i, p in enumerate(clients.peers("after")) if p != before[i]]
    assert len(moved) == sessions[victim], (moved, sessions)
    await until(lambda: len(pool.pids()) == 2 and victim not in pool.pids())
    replacement = next(pid for pid in pool.pids() if pid not in sessions)
    await clients.round("replaced")
    now = clients.peers("replaced")
    # The survivor's clients never moved; the victim's are back in their slot, the
    # replacement's (it got a fresh socket in the victim's map slot).
    assert all(now[i] == before[i] for i in range(64) if i not in moved)
    after = await _sessions(pool)
    assert after[replacement] == len(moved), after
    assert after[survivor] >= sessions[survivor]
    clients.close()


async def test_control_plane_restart_then_a_dead_worker_then_reload_keep_udp_forwarding(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    key = await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 32)
    await clients.round("first")
    first = clients.peers("first")
    pool.detach()  # kill -9 of the control plane is the same for the data plane
    await clients.round("alone")  # no control plane: the workers keep the port
    assert clients.peers("alone") == first
    again = await _pool(pools, state_dir)
    await _device(lab, again, recorder)  # reconcile: the same spec is a no-op
    await clients.round("found")
    assert clients.peers("found") == first, "a restart of the control plane moved sessions"
    # The new control plane never held the maps: it gets them from a worker for the
    # replacement of a dead one, which then takes its slot back.
    sessions = await _sessions(again)
    victim = max(sessions, key=lambda pid: sessions[pid])
    os.kill(victim, signal.SIGKILL)
    await until(lambda: len(again.pids()) == 2 and victim not in again.pids())
    await clients.round("replaced")
    replacement = next(pid for pid in again.pids() if pid not in sessions)
    assert (await _sessions(again))[replacement] == sessions[victim]
    old = set(again.pids())
    await again.reload()
    took = await clients.round("reloaded")
    assert took < 2.0
    now = await _sessions(again)
    assert not set(now) & old and min(now.values()) > 0, now
    assert sum(now.values()) == 32
    await until(lambda: not any(process_alive(pid) for pid in old))
    await clients.round("drained")
    assert clients.peers("drained") == clients.peers("reloaded")
    assert again.running()[key].config["listen"] == DEVICE["listen"]
    clients.close()


async def test_an_update_that_keeps_the_listener_sends_new_sessions_the_new_way(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 16)
    await clients.round("old")
    second = UdpRecorder(recorder.inst, "127.0.0.1", 4322)  # type: ignore[attr-defined]
    try:
        await _device(lab, pool, recorder, connect="udp:127.0.0.1:4322")
        clients.recorder = second
        await clients.round("new", timeout=2.0)
        assert len(second.seen) == 16
        sessions = await _sessions(pool)
        assert sum(sessions.values()) == 16 and min(sessions.values()) > 0, sessions
    finally:
        second.close()
    clients.close()


async def test_a_listener_change_moves_the_groups(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    # Another port: the new group opens before the old one closes. Another address on the same
    # port: the old group must close first (the port clash path). Then dual-stack IPv6.
    for listen, address, total in [("udp:127.0.0.1:1235", ("127.0.0.1", 1235), 16),
                                   ("udp:0.0.0.0:1235", ("198.18.0.1", 1235), 16),
                                   ("udp:[::]:1236", ("fd42::1", 1236), 16),
                                   ("udp:[::]:1236", ("198.18.0.1", 1236), 32)]:
        await _device(lab, pool, recorder, listen=listen)  # the last: the same, a no-op
        clients = Clients(lab, recorder, 16, address)
        await clients.round(listen, timeout=2.0)
        sessions = await _sessions(pool)
        assert sum(sessions.values()) == total and min(sessions.values()) > 0, sessions
        clients.close()
    probe = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(LISTEN)
    probe.send(b"x")
    with pytest.raises(ConnectionRefusedError):  # the old port is closed: ICMP unreachable
        probe.settimeout(1)
        probe.recv(10)
    probe.close()


async def test_a_rejected_update_moves_no_session(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 16)
    await clients.round("before")
    blocker = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 1240))
    with pytest.raises(DeviceStartError) as err:
        await _device(lab, pool, recorder, listen="udp:127.0.0.1:1240")
    blocker.close()
    assert err.value.message == ("Error occurred when starting proxy device: Error: listen udp "
                                 "127.0.0.1:1240: bind: address already in use")
    await clients.round("after")
    assert clients.peers("after") == clients.peers("before")
    assert pool.running()[("c1", "u")].config["listen"] == DEVICE["listen"]
    clients.close()


async def test_a_second_device_on_the_same_port_is_refused_as_without_the_spread(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder) -> None:
    pool = await _pool(pools, state_dir)
    await _device(lab, pool, recorder)
    # SO_REUSEPORT would let a second root-owned group join the first: it must not.
    with pytest.raises(DeviceStartError) as err:
        await started(pool, "v", proxy(**DEVICE), host=lab.host,
                      inst=recorder.inst)  # type: ignore[attr-defined]
    assert err.value.message.endswith(
        "listen udp 127.0.0.1:1234: bind: address already in use"), err.value.message
    clients = Clients(lab, recorder, 8)
    await clients.round("still")
    clients.close()


@pytest.mark.parametrize("how", ["one worker", "--no-udp-spread"])
async def test_fallback_one_owner_worker_reads_the_one_socket(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], recorder: UdpRecorder,
        caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.INFO, logger="lxdproxy.workers")
    kw = {"workers": 1} if how == "one worker" else {"udp_spread": False}
    pool = await _pool(pools, state_dir, **kw)
    await _device(lab, pool, recorder)
    clients = Clients(lab, recorder, 16)
    await clients.round("hello")
    assert sorted((await _sessions(pool)).values())[-1] == 16
    said = [r.getMessage() for r in caplog.records if "not spread" in r.getMessage()]
    assert len(said) == 1 and f"({how if how == 'one worker' else 'turned off'}" in said[0]
    clients.close()


def test_bpf_refused_without_privileges_is_said_not_raised() -> None:
    # The pool asks reuseport.unavailable() once; a process that may not use bpf(2) (here:
    # dropped to nobody) gets the reason, not an exception.
    # (kernel.unprivileged_bpf_disabled is 2 here, as on most distributions.)
    code = "import os; from lxdproxy.forward.udp import reuseport; {drop}print(reuseport.unavailable())"
    for drop, said in [("os.setgid(65534); os.setuid(65534); ",
                        "bpf(2) refused (Operation not permitted)"), ("", "None")]:
        out = subprocess.run([sys.executable, "-c", code.format(drop=drop)],
                             capture_output=True, text=True, check=True, timeout=30)
        assert out.stdout.strip() == said, out
