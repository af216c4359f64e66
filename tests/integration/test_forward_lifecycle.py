"""Device lifecycle in the lab: start errors with LXD's text, update (with restore), re-adding a
port, instance restarts, a dead target, and every fd given back."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections.abc import AsyncIterator

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import fd_count, roundtrip, started
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.netns import netns_executor

pytestmark = pytest.mark.lab

B1 = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:127.0.0.1:4321"}


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5)
    yield f
    await f.stop_all()


async def test_port_in_use_gives_lxds_error_and_leaves_nothing_open(
    lab: Lab, fwd: Forwarder
) -> None:
    inst = lab.add_instance()
    blocker = lab.host.socket()
    blocker.bind(("127.0.0.1", 1236))
    blocker.listen()
    netns_executor(inst.namespaces.net)  # the shared per-netns thread (and its fd) stays cached
    before = fd_count()
    with pytest.raises(DeviceStartError) as err:
        # The first two listeners open fine and must be closed again when the third fails.
        await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234-1236",
                                      connect="tcp:127.0.0.1:4321"), host=lab.host, inst=inst)
    assert str(err.value) == (
        "Error occurred when starting proxy device: Error: Failed listening on 127.0.0.1:1236: "
        "listen tcp 127.0.0.1:1236: bind: address already in use"
    )
    assert err.value.status == 400
    assert not fwd.active(("c1", "p"))
    assert fd_count() == before
    blocker.close()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234-1236", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1236)) == b"hello"


async def test_ipv6_and_udp_error_texts(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    blockers = []
    for family, kind, addr in [(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 1234)),
                               (socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 1234))]:
        s = lab.host.socket(family, kind)
        s.bind(addr)
        blockers.append(s)
    with pytest.raises(DeviceStartError) as err:
        await started(fwd, "p", proxy(listen="tcp:[::1]:1234", connect="tcp:[::1]:4321"),
                      host=lab.host, inst=inst)
    assert str(err.value) == (
        "Error occurred when starting proxy device: Error: Failed listening on [::1]:1234: "
        "listen tcp [::1]:1234: bind: cannot assign requested address"
    ) or str(err.value).endswith("listen tcp [::1]:1234: bind: address already in use")
    with pytest.raises(DeviceStartError) as err:
        await started(fwd, "u", proxy(listen="udp:127.0.0.1:1234", connect="udp:127.0.0.1:4321"),
                      host=lab.host, inst=inst)
    # forkproxy reports a UDP bind failure without "Failed listening on".
    assert str(err.value) == ("Error occurred when starting proxy device: Error: "
                              "listen udp 127.0.0.1:1234: bind: address already in use")
    for s in blockers:
        s.close()


async def test_readd_same_port_right_after_removal(lab: Lab, fwd: Forwarder) -> None:
    # checklist A7/A8: the old listener is really gone, even with connections in TIME_WAIT.
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    for _ in range(3):
        key = await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
        assert await roundtrip(lab.host, ("127.0.0.1", 1234)) == b"hello"
        await fwd.stop(key)
        assert not fwd.active(key)
        with pytest.raises(ConnectionRefusedError):
            await roundtrip(lab.host, ("127.0.0.1", 1234))


async def test_update_changes_connect_and_failed_update_restores_the_old_device(
    lab: Lab, fwd: Forwarder
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, tag=True)
    lab.echo(inst, "tcp", "127.0.0.1", 1337, tag=True)
    key = await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    ns = {"listen_ns": lab.host.namespaces, "connect_ns": inst.namespaces, "instance_name": "c1"}
    # checklist B3: device set connect -> the live device follows.
    await fwd.start(key, proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:1337"), **ns)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"x") == b"1337:x"
    # A new config that cannot start: the error comes back and the old device is up again
    # (LXD leaves it down, spec §6).
    blocker = lab.host.socket()
    blocker.bind(("127.0.0.1", 1240))
    with pytest.raises(DeviceStartError, match="Failed listening on 127.0.0.1:1240"):
        await fwd.start(key, proxy(listen="tcp:127.0.0.1:1240", connect="tcp:127.0.0.1:4321"),
                        **ns)
    blocker.close()
    assert fwd.active(key)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"x") == b"1337:x"
    # The same listen port in the new config works (old one stopped first, as in LXD).
    await fwd.start(key, proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321"), **ns)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"x") == b"4321:x"


async def test_instance_restart_recreates_the_device_against_the_new_pid(
    lab: Lab, fwd: Forwarder
) -> None:
    # checklist B2: `lxc restart -f`, new server, echo OK.
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    key = await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"before") == b"before"
    old_pid = inst.pid
    await asyncio.to_thread(inst.restart)
    assert inst.pid != old_pid
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    # The manager starts the same device against the new namespaces: an update.
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"after") == b"after"


async def test_dead_target_does_not_stall_other_clients(
    lab: Lab, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    # 198.18.0.250 is on the bridge's subnet but nobody has it: the SYN never gets out (no ARP
    # answer), so the dial hangs until our timeout or EHOSTUNREACH.
    await started(fwd, "dead", proxy(listen="tcp:127.0.0.1:1300",
                                     connect="tcp:198.18.0.250:4321"), host=lab.host, inst=inst)
    await started(fwd, "live", proxy(**B1), host=lab.host, inst=inst)
    stuck = lab.host.socket()
    stuck.connect(("127.0.0.1", 1300))
    stuck.sendall(b"anyone?")
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"not stalled") == b"not stalled"
    stuck.setblocking(False)
    with pytest.raises(BlockingIOError):
        stuck.recv(10)  # the dead dial is still pending while the live device answered
    stuck.setblocking(True)
    stuck.settimeout(30)
    with caplog.at_level(logging.WARNING, logger="lxdproxy.forward"):
        try:
            # Closed promptly once the dial fails (in a thread: this loop runs the forwarder).
            assert await asyncio.to_thread(stuck.recv, 10) == b""
        except ConnectionResetError:
            pass
        for _ in range(50):
            if "Failed connecting to target" in caplog.text:
                break
            await asyncio.sleep(0.05)
    stuck.close()
    assert "Failed connecting to target: dial tcp 198.18.0.250:4321:" in caplog.text
    assert fwd.stats().failed == 1


async def test_stop_closes_live_connections_and_releases_every_fd(
    lab: Lab, fwd: Forwarder
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    key = await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234)) == b"hello"  # warm the netns threads
    await fwd.stop(key)
    baseline = fd_count()
    key = await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    held = []
    for _ in range(5):
        s = lab.host.socket()
        s.connect(("127.0.0.1", 1234))
        s.sendall(b"x")
        assert await asyncio.to_thread(s.recv, 1) == b"x"
        held.append(s)
    assert fwd.open_connections(key) == 5
    await fwd.stop(key)
    for s in held:
        s.settimeout(5)
        assert await asyncio.to_thread(s.recv, 1) == b""  # the proxy closed its side
        s.close()
    assert fd_count() == baseline
    assert fwd.stats().devices == 0


async def test_namespace_gone_is_a_start_error(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    stale = inst.namespaces  # /proc/<pid>/ns/... of an init that is about to die
    inst._kill()
    with pytest.raises(DeviceStartError) as err:
        await fwd.start(("c1", "p"), proxy(**B1), listen_ns=lab.host.namespaces,
                        connect_ns=stale, instance_name="c1")
    assert str(err.value) == ("Error occurred when starting proxy device: Error: No such file or "
                              "directory - Failed setns to connector network namespace")
    assert not fwd.active(("c1", "p"))


async def test_out_of_fds_on_accept_is_survived_and_the_client_served_later(
    lab: Lab, fwd: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(**B1), host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234)) == b"hello"
    client = lab.host.socket()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    with caplog.at_level(logging.WARNING, logger="lxdproxy.forward"):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard))
            while True:
                try:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            client.connect(("127.0.0.1", 1234))  # queued by the kernel; accept() gets EMFILE
            for _ in range(100):
                if "Failed accepting new connection" in caplog.text:
                    break
                await asyncio.sleep(0.02)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Failed accepting new connection: Too many open files" in caplog.text
    # fds are back: the paused listener resumes and the queued client is served.
    client.sendall(b"later")
    client.shutdown(socket.SHUT_WR)
    client.settimeout(10)
    assert await asyncio.to_thread(client.recv, 100) == b"later"
    client.close()
