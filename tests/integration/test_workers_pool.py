"""WorkerPool in the lab, real traffic: workers outlive the control plane, replace each other,
reload, update in place, and stop means stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab.continuity import ConnectLoop, HeldConnection
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lab.waiting import process_alive, until
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.stream_relay import RelayMode
from lxdproxy.workers import WorkerPool
from lxdproxy.workers.protocol import PROTOCOL_VERSION, FrameDecoder, Reply

pytestmark = pytest.mark.lab

LISTEN = ("127.0.0.1", 1234)
TCP = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:127.0.0.1:4321"}


async def _pool(pools: list[WorkerPool], state_dir: Path, **kw: object) -> WorkerPool:
    pool = WorkerPool(state_dir, workers=2, **kw)  # type: ignore[arg-type]
    await pool.open()
    pools.append(pool)
    return pool


async def _tcp_device(lab: Lab, pools: list[WorkerPool], state_dir: Path, **kw: object
                      ) -> tuple[Any, WorkerPool, tuple[str, str]]:
    """An instance with a tcp echo server on 4321 and a pool forwarding LISTEN to it."""
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    pool = await _pool(pools, state_dir, **kw)
    key = await started(pool, "p", proxy(**TCP), host=lab.host, inst=inst)
    return inst, pool, key


def _refused_at(place: object, address: tuple[str, int]) -> bool:
    sock = place.socket()  # type: ignore[attr-defined]
    try:
        sock.connect(address)
    except ConnectionRefusedError:
        return True
    finally:
        sock.close()
    return False


async def test_every_worker_accepts_on_the_one_listener(lab: Lab, state_dir: Path,
                                                        pools: list[WorkerPool]) -> None:
    inst, pool, _key = await _tcp_device(lab, pools, state_dir)
    for _ in range(200):
        assert await roundtrip(lab.host, LISTEN) == b"hello"
    stats = await pool.stats()
    assert stats.accepted == 200 and stats.workers == 2
    assert all(w["accepted"] > 0 for w in stats.per_worker), stats.per_worker


async def test_control_plane_restart_keeps_listeners_and_connections(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    pool = await _pool(pools, state_dir)
    device = proxy(**TCP)
    key = await started(pool, "p", device, host=lab.host, inst=inst)
    held = HeldConnection(lab.host, LISTEN)
    assert held.echo()
    pids = sorted(pool.pids())
    with ConnectLoop(lab.host, LISTEN, interval=0.02, duration=20) as loop:
        await asyncio.sleep(0.2)
        pool.detach()  # the control plane is gone: nothing changes for the data plane
        await asyncio.sleep(0.3)
        assert held.echo()
        again = await _pool(pools, state_dir)
        assert sorted(again.pids()) == pids  # found them; spawned none
        assert again.running()[key].config == device.raw()
        assert again.running()[key].instance_name == "c1"
        before = (await again.stats()).accepted
        # The new control plane re-starts every stored device: the same spec is a no-op.
        await started(again, "p", device, host=lab.host, inst=inst)
        assert sorted(again.pids()) == pids
        await asyncio.sleep(0.3)
    result = loop.result
    assert result.refused == 0 and result.failed == 0, result.errors
    assert result.ok > 10
    assert held.echo()
    assert (await again.stats()).accepted > before
    held.close()


async def test_a_killed_worker_is_replaced_and_only_its_connections_are_lost(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    inst, pool, _key = await _tcp_device(lab, pools, state_dir)
    held: list[HeldConnection] = []
    # One shared listening socket: a sequential client may land on one worker many times in
    # a row, so open connections until both workers hold some.
    while len(held) < 200:
        held.append(HeldConnection(lab.host, LISTEN))
        assert held[-1].echo()
        per_worker = {w["pid"]: w["open_connections"] for w in (await pool.stats()).per_worker}
        if len(held) >= 8 and min(per_worker.values()) > 0:
            break
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    assert 0 < per_worker[victim] < len(held), per_worker
    with ConnectLoop(lab.host, LISTEN, interval=0.02, duration=20) as loop:
        await asyncio.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: len(pool.pids()) == 2 and victim not in pool.pids())
        await asyncio.sleep(0.3)
    assert loop.result.refused == 0 and loop.result.failed == 0, loop.result.errors
    alive = [h.echo() for h in held]
    assert alive.count(False) == per_worker[victim]
    stats = await pool.stats()
    assert stats.worker_deaths == 1 and stats.workers == 2
    new_pid = next(p for p in pool.pids() if p not in per_worker)
    # The replacement got the listener from the survivor: it accepts too.
    for _ in range(60):
        assert await roundtrip(lab.host, LISTEN) == b"hello"
    stats = await pool.stats()
    assert any(w["pid"] == new_pid and w["accepted"] > 0 for w in stats.per_worker)
    for h in held:
        h.close()


async def test_update_of_connect_keeps_established_connections(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, 4322, tag=True)
    pool = await _pool(pools, state_dir)
    await started(pool, "p", proxy(**TCP), host=lab.host, inst=inst)
    held = HeldConnection(lab.host, LISTEN, tag=b"4321:")
    assert held.echo()
    with ConnectLoop(lab.host, LISTEN, interval=0.01, duration=10) as loop:
        await asyncio.sleep(0.1)
        await started(pool, "p", proxy(listen="tcp:127.0.0.1:1234",
                                       connect="tcp:127.0.0.1:4322"), host=lab.host, inst=inst)
        await asyncio.sleep(0.1)
    # The loop's echo check fails on a tagged reply; what matters is that nothing was refused.
    assert loop.result.refused == 0, loop.result.errors
    assert await roundtrip(lab.host, LISTEN) == b"4322:hello"
    assert held.echo(), "the established connection must keep its old target"
    assert pool.running()[("c1", "p")].config["connect"] == "tcp:127.0.0.1:4322"
    held.close()


async def test_a_listener_change_opens_the_new_one_before_closing_the_old(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    inst, pool, _key = await _tcp_device(lab, pools, state_dir)
    held = HeldConnection(lab.host, LISTEN)
    await started(pool, "p", proxy(listen="tcp:127.0.0.1:1235", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1235)) == b"hello"
    assert _refused_at(lab.host, LISTEN)
    assert held.echo()
    # Same port on another address: the old listener must go first; connections still stay.
    await started(pool, "p", proxy(listen="tcp:0.0.0.0:1235", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, (lab.host.ipv4, 1235)) == b"hello"
    assert held.echo()
    held.close()


async def test_a_rejected_update_changes_nothing(lab: Lab, state_dir: Path,
                                                 pools: list[WorkerPool]) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    pool = await _pool(pools, state_dir)
    device = proxy(**TCP)
    key = await started(pool, "p", device, host=lab.host, inst=inst)
    held = HeldConnection(lab.host, LISTEN)
    blocker = lab.host.socket()
    blocker.bind(("127.0.0.1", 1240))
    blocker.listen()
    with pytest.raises(DeviceStartError) as err:
        await started(pool, "p", proxy(listen="tcp:127.0.0.1:1240", connect="tcp:127.0.0.1:4321"),
                      host=lab.host, inst=inst)
    assert str(err.value) == ("Error occurred when starting proxy device: Error: Failed listening "
                              "on 127.0.0.1:1240: listen tcp 127.0.0.1:1240: bind: address "
                              "already in use")
    blocker.close()
    assert held.echo()
    assert await roundtrip(lab.host, LISTEN) == b"hello"
    assert pool.running()[key].config == device.raw()
    held.close()


async def test_stop_refuses_new_connects_within_100ms(lab: Lab, state_dir: Path,
                                                      pools: list[WorkerPool]) -> None:
    inst, pool, key = await _tcp_device(lab, pools, state_dir)
    assert await roundtrip(lab.host, LISTEN) == b"hello"
    t0 = time.monotonic()
    await pool.stop(key)
    while not _refused_at(lab.host, LISTEN):
        assert time.monotonic() - t0 < 0.1
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert elapsed_ms < 100, elapsed_ms
    assert pool.running() == {}


async def test_reload_hands_listeners_to_new_workers_and_old_ones_drain(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    inst, pool, _key = await _tcp_device(lab, pools, state_dir)
    held = HeldConnection(lab.host, LISTEN)
    old = set(pool.pids())
    with ConnectLoop(lab.host, LISTEN, interval=0.02, duration=20) as loop:
        await asyncio.sleep(0.2)
        await pool.reload()
        await asyncio.sleep(0.3)
    assert loop.result.refused == 0 and loop.result.failed == 0, loop.result.errors
    stats = await pool.stats()
    assert stats.workers == 2 and stats.draining_workers >= 1
    assert held.echo(), "an established connection goes on through a draining worker"
    new = {w["pid"] for w in stats.per_worker if not w["draining"]}
    assert not new & old
    held.close()
    # Drained: the old workers exit on their own.
    await until(lambda: not any(process_alive(pid) for pid in old))
    assert (await pool.stats()).draining_workers == 0


async def test_reload_drain_timeout_ends_old_connections(lab: Lab, state_dir: Path,
                                                         pools: list[WorkerPool]) -> None:
    inst, pool, _key = await _tcp_device(lab, pools, state_dir, drain_timeout=0.5)
    held = HeldConnection(lab.host, LISTEN)
    old = set(pool.pids())
    t0 = time.monotonic()
    await pool.reload()
    await until(lambda: not any(process_alive(pid) for pid in old), timeout=5)
    assert time.monotonic() - t0 < 3
    assert not held.echo()
    assert await roundtrip(lab.host, LISTEN) == b"hello"
    held.close()


async def test_without_the_udp_spread_one_owner_worker_reads_every_session(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    # --no-udp-spread: today's model (tests/integration/test_workers_udp_spread.py: the spread).
    inst = lab.add_instance()
    lab.echo(inst, "udp", "127.0.0.1", 4321)
    pool = await _pool(pools, state_dir, udp_spread=False)
    await started(pool, "u", proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    clients = [lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    for rnd in range(5):
        for i, c in enumerate(clients):
            c.sendto(f"{i}:{rnd}".encode(), LISTEN)
            assert c.recvfrom(65536)[0] == f"{i}:{rnd}".encode()
    # One owner worker read every datagram; its peer holds the socket but reads nothing.
    sessions = {}
    for w in (await pool.stats()).per_worker:
        sessions[w["pid"]] = w.get("udp_sessions", 0)
    assert sorted(sessions.values()) == [0, 8], sessions
    for c in clients:
        c.close()


async def test_shutdown_leaves_no_process_and_no_socket_file(lab: Lab, state_dir: Path,
                                                             pools: list[WorkerPool]) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    pool = await _pool(pools, state_dir)
    path = str(state_dir / "proxy.sock")
    await started(pool, "s", proxy(listen=f"unix:{path}", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(None, path) == b"hello"
    pids = pool.pids()
    await pool.shutdown()
    assert not any(process_alive(pid) for pid in pids)
    assert not os.path.exists(path)
    assert list((state_dir / "workers").glob("*.sock")) == []


async def test_a_worker_answers_another_protocol_version_with_both_versions(
        state_dir: Path, pools: list[WorkerPool]) -> None:
    pool = await _pool(pools, state_dir)
    path = next((state_dir / "workers").glob("*.sock"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    frame = json.dumps({"v": PROTOCOL_VERSION + 1, "id": 1, "kind": "hello", "fds": 0,
                        "body": {}}).encode()
    sock.sendall(struct.pack("!I", len(frame)) + frame)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    (reply,) = FrameDecoder().feed(data)
    assert isinstance(reply.message, Reply) and not reply.message.ok
    assert reply.message.error == (f"worker protocol version mismatch: this side speaks "
                                   f"{PROTOCOL_VERSION}, the peer sent {PROTOCOL_VERSION + 1}")
    assert (await pool.stats()).workers == 2  # the worker lives on for its own control plane


async def test_a_hung_worker_is_killed_and_replaced_instead_of_wedging_the_control_plane(
        lab: Lab, state_dir: Path, pools: list[WorkerPool]) -> None:
    """A stopped worker never answers: the request gives up after ``request_timeout``, the worker
    is killed and replaced, and the listener keeps forwarding through the other one."""
    _inst, pool, _key = await _tcp_device(lab, pools, state_dir, request_timeout=1.0)
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        stats = await asyncio.wait_for(pool.stats(), 10)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    assert 0.9 <= took < 5, took
    assert victim not in [w["pid"] for w in stats.per_worker]
    await until(lambda: len(pool.pids()) == 2 and victim not in pool.pids())
    await until(lambda: not process_alive(victim))
    for _ in range(20):
        assert await roundtrip(lab.host, LISTEN) == b"hello"
    assert (await pool.stats()).worker_deaths == 1


def _worker_pipes(pool: WorkerPool) -> int:
    n = 0
    for pid in pool.pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return n


@pytest.mark.parametrize("relay", [RelayMode.COPY, RelayMode.SPLICE])
async def test_the_workers_relay_streams_the_way_the_pool_was_told(
        lab: Lab, state_dir: Path, pools: list[WorkerPool], relay: RelayMode) -> None:
    # `serve --relay` reaches the workers: with nobody reading the echo, a splicing relay holds
    # its bytes in pipes (one a direction); copies hold none. Either way every byte comes back.
    _inst, pool, _key = await _tcp_device(lab, pools, state_dir, relay=relay)
    before = _worker_pipes(pool)
    payload = os.urandom(8 << 20)
    with lab.host.socket() as c:
        c.connect(LISTEN)
        sender = asyncio.get_running_loop().run_in_executor(None, c.sendall, payload)
        await asyncio.sleep(1.0)
        held = _worker_pipes(pool) - before
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.to_thread(c.recv, 1 << 20)
        await sender
    assert bytes(got) == payload
    assert held == (4 if relay is RelayMode.SPLICE else 0)
