"""The accept and dial path in the lab: one accept per wake-up on a listener two devices share,
the task-free dial (refused, timed out, abandoned at stop: the same words, counters and
budget as the coroutine path), and socket-pool batches made in the target's netns."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lxdproxy.forward.device import DeviceParams, ForwardedDevice
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.forward.plan import plan_device
from lxdproxy.forward.socket_pool import BATCH

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])]

B1 = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:127.0.0.1:4321"}


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5)
    yield f
    await f.stop_all()


async def _closed_by_proxy(sock: socket.socket) -> None:
    """The proxy accepted and then closed this client (EOF or reset), within 10 s."""
    sock.settimeout(10)
    try:
        assert await asyncio.to_thread(sock.recv, 10) == b""
    except ConnectionResetError:
        pass


async def _pool_warm(fwd: Forwarder) -> None:
    """The first dial of a device waits for its socket pool's first batch (the coroutine
    path); once the batch is in, dials take the task-free path."""
    for _ in range(200):
        if fwd.pooled_sockets() > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the socket pool never filled")


async def _connect(lab: Lab, port: int) -> socket.socket:
    client = lab.host.socket()
    await asyncio.to_thread(client.connect, ("127.0.0.1", port))
    return client


async def test_a_burst_queued_on_a_listener_two_devices_share_is_served_whole(
        lab: Lab) -> None:
    # Two workers hold the same listening socket and accept one client per wake-up: clients
    # left in the queue must wake a device again (level-triggered), whichever takes them.
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    device = proxy(**B1)
    params = DeviceParams(device, lab.host.namespaces, inst.namespaces, "c1")
    first = ForwardedDevice(params, plan_device(device), label="first", connect_timeout=5,
                            udp_idle_timeout=30)
    await first.start()
    second = ForwardedDevice(params, plan_device(device), label="second", connect_timeout=5,
                             udp_idle_timeout=30)
    await second.start(listeners=[first.listeners[0][0].dup()])
    clients = []
    try:
        for _ in range(3 * BATCH):
            # On this thread, without letting the loop run: all of them wait in the queue.
            client = lab.host.socket()
            client.settimeout(10)
            client.connect(("127.0.0.1", 1234))
            client.sendall(b"q")
            clients.append(client)
        for client in clients:
            assert await asyncio.to_thread(client.recv, 1) == b"q"
        assert first.accepted + second.accepted == 3 * BATCH
    finally:
        for client in clients:
            client.close()
        await second.stop()
        await first.stop()


async def _failed_dials(lab: Lab, fwd: Forwarder, key: object, port: int, n: int, text: str,
                        caplog: pytest.LogCaptureFixture) -> None:
    """``n`` clients each see connect-then-close, the first warming the socket pool (so the
    others take the task-free dial); each logs ``text`` once and gives its budget back."""
    with caplog.at_level(logging.WARNING, logger="lxdproxy.forward"):
        for i in range(n):
            client = await _connect(lab, port)
            await _closed_by_proxy(client)
            client.close()
            if i == 0:
                await _pool_warm(fwd)
    assert caplog.text.count(text) == n
    assert fwd.stats().failed == n
    assert fwd.open_connections(key) == 0
    assert fwd.budget.connections == 0


async def test_refused_dial_is_connect_then_close_with_gos_words(
    lab: Lab, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    inst = lab.add_instance()  # nobody listens on 127.0.0.1:4999 in it: refused at once
    key = await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234",
                                        connect="tcp:127.0.0.1:4999"), host=lab.host, inst=inst)
    text = "Failed connecting to target: dial tcp 127.0.0.1:4999: connect: connection refused"
    await _failed_dials(lab, fwd, key, 1234, 3, text, caplog)
    # And the device still relays once the target is there.
    lab.echo(inst, "tcp", "127.0.0.1", 4999)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"up") == b"up"


async def test_dial_timeout_says_io_timeout_and_gives_the_budget_back(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    fwd = Forwarder(connect_timeout=0.3)
    inst = lab.add_instance()
    # 198.18.0.250 is on the bridge's subnet but nobody has it: the SYN never leaves.
    key = await started(fwd, "dead", proxy(listen="tcp:127.0.0.1:1300",
                                           connect="tcp:198.18.0.250:4321"),
                        host=lab.host, inst=inst)
    try:
        text = "Failed connecting to target: dial tcp 198.18.0.250:4321: i/o timeout"
        await _failed_dials(lab, fwd, key, 1300, 2, text, caplog)
    finally:
        await fwd.stop_all()


async def test_stop_during_dials_closes_the_clients_and_frees_everything(
    lab: Lab, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    inst = lab.add_instance()
    key = await started(fwd, "dead", proxy(listen="tcp:127.0.0.1:1300",
                                           connect="tcp:198.18.0.250:4321"),
                        host=lab.host, inst=inst)
    clients = [await _connect(lab, 1300)]
    await _pool_warm(fwd)
    clients.append(await _connect(lab, 1300))
    for _ in range(100):
        if fwd.open_connections(key) == 2:
            break
        await asyncio.sleep(0.01)
    assert fwd.open_connections(key) == 2  # both dials are pending
    with caplog.at_level(logging.WARNING, logger="lxdproxy.forward"):
        await fwd.stop(key)
        for client in clients:
            await _closed_by_proxy(client)
            client.close()
    assert "Failed connecting" not in caplog.text  # a stop is no failed dial
    assert fwd.stats().failed == 0
    assert fwd.budget.connections == 0


async def test_pool_batches_after_the_first_are_made_in_the_targets_netns(
    lab: Lab, fwd: Forwarder
) -> None:
    # The echo server is on the instance's loopback only: a target socket made in any other
    # netns would be refused. Later batches are made by this (the loop's) thread entering the
    # instance's netns, which must be back in its own afterwards.
    own = os.readlink("/proc/thread-self/ns/net")
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    for n in range(3 * BATCH + 1):
        assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"%d" % n) == b"%d" % n
        assert os.readlink("/proc/thread-self/ns/net") == own
    assert fwd.stats().failed == 0
