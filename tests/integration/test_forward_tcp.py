"""tcp listeners through the forwarder, in the lab (LXD checklist §7 B, plus families/wildcards)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lab import Lab
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lxdproxy.forward.forwarder import Forwarder

pytestmark = pytest.mark.lab


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=3)
    yield f
    await f.stop_all()


async def test_tcp_to_tcp_bind_host(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"hello B1") == b"hello B1"


async def test_ipv6_listen_and_connect(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "::1", 4321)
    await started(fwd, "p", proxy(listen="tcp:[::1]:1234", connect="tcp:[::1]:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("::1", 1234), b"six") == b"six"


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
@pytest.mark.parametrize("listen", ["tcp:0.0.0.0:1234", "tcp:[::]:1234", "tcp::1234"])
async def test_wildcard_listen_is_dual_stack(lab: Lab, fwd: Forwarder, listen: str) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen=listen, connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    assert await roundtrip(client, (lab.host.ipv4, 1234), b"v4 client") == b"v4 client"
    assert await roundtrip(client, (lab.host.ipv6, 1234), b"v6 client") == b"v6 client"


@pytest.mark.parametrize(("connect", "backend"), [("tcp:0.0.0.0:4321", "127.0.0.1"),
                                                  ("tcp:[::]:4321", "::1")])
async def test_wildcard_connect_means_the_instance_loopback(
    lab: Lab, fwd: Forwarder, connect: str, backend: str
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", backend, 4321)  # loopback only: reachable from inside the instance only
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect=connect),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"own stack") == b"own stack"


async def test_bind_instance_listens_inside_and_connects_on_the_host_side(
    lab: Lab, fwd: Forwarder
) -> None:
    inst = lab.add_instance()
    lab.echo(lab.host, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:80", connect="tcp:127.0.0.1:4321",
                                  bind="instance"), host=lab.host, inst=inst)
    assert await roundtrip(inst, ("127.0.0.1", 80), b"from inside") == b"from inside"
    with pytest.raises(ConnectionRefusedError):
        await roundtrip(lab.host, ("127.0.0.1", 80))  # nothing listens on the host side


@pytest.mark.parametrize(
    ("listen", "connect", "expected"),
    [
        # N:N by position (checklist B4 uses three separate listen ports)
        ("tcp:127.0.0.1:1234,1235,1236", "tcp:127.0.0.1:4321-4323",
         {1234: 4321, 1235: 4322, 1236: 4323}),
        # ranges in a different order still map by position
        ("tcp:127.0.0.1:1236,1234-1235", "tcp:127.0.0.1:4321-4323",
         {1236: 4321, 1234: 4322, 1235: 4323}),
        # N:1
        ("tcp:127.0.0.1:1234-1236", "tcp:127.0.0.1:4322", {1234: 4322, 1235: 4322, 1236: 4322}),
    ],
)
@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_port_ranges_map_to_the_right_backend(
    lab: Lab, fwd: Forwarder, listen: str, connect: str, expected: dict[int, int]
) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, 4322, 4323, tag=True)
    await started(fwd, "p", proxy(listen=listen, connect=connect), host=lab.host, inst=inst)
    for lport, cport in expected.items():
        got = await roundtrip(lab.host, ("127.0.0.1", lport), b"x")
        assert got == f"{cport}:x".encode(), lport


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_half_close_answer_after_eof_arrives(lab: Lab, fwd: Forwarder) -> None:
    # checklist B4 with `nc -N`: the backend answers only after it saw the client's EOF.
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321, reply_after_eof=True)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one pipe-ful in flight
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), payload) == payload


async def test_many_listen_ports_are_independent_of_one_slow_client(
    lab: Lab, fwd: Forwarder
) -> None:
    # A client that connects and says nothing must not hold up anyone (LXD is fine here too,
    # but its synchronous dial is not: see test_dead_target_does_not_stall_other_clients).
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321"),
                  host=lab.host, inst=inst)
    idle = lab.host.socket()
    idle.connect(("127.0.0.1", 1234))
    try:
        assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"next") == b"next"
    finally:
        idle.close()


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
async def test_security_uid_owns_the_outgoing_tcp_socket(lab: Lab, fwd: Forwarder,
                                                         userns: bool) -> None:
    # forkproxy's connector runs as security.uid/gid, so its sockets carry that owner (what
    # netfilter's `meta skuid` sees); inside a user namespace that is the instance's uid 1234.
    inst = lab.add_instance(userns=userns)
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="tcp:127.0.0.1:4321",
                                  security_uid="1234", security_gid="1234"),
                  host=lab.host, inst=inst)
    held = lab.host.socket()
    held.connect(("127.0.0.1", 1234))
    held.sendall(b"x")
    assert await asyncio.to_thread(held.recv, 1) == b"x"
    out = (await asyncio.to_thread(inst.run, ["ss", "-tnHe", "state", "established",
                                              "dport", "=", ":4321"])).stdout.decode()
    held.close()
    assert "uid:1234 " in out, out
