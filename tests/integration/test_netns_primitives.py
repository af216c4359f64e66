"""lxdproxy.netns: sockets born in the right namespace, and the namespace helper process."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from lab import Lab
from lxdproxy.netns import NamespaceHelper, netns_executor

pytestmark = pytest.mark.lab


def test_executor_socket_lives_in_that_netns(lab: Lab) -> None:
    inst = lab.add_instance()
    sock = netns_executor(inst.namespaces.net).socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind((inst.ipv4, 0))  # only possible inside the instance's netns
    ours = socket.socket()
    with ours, pytest.raises(OSError):
        ours.bind((inst.ipv4, 0))


def test_executor_for_own_netns_runs_inline() -> None:
    ex = netns_executor(None)
    import threading

    assert ex.call(threading.get_ident) == threading.get_ident()


async def test_helper_binds_in_instance_mount_ns_with_owner_and_mode(lab: Lab) -> None:
    inst = lab.add_instance()
    helper = await NamespaceHelper.spawn(inst.namespaces)
    try:
        path = f"/tmp/h-{lab.tag}.sock"
        sock = await helper.bind_unix(path, uid=1234, gid=4321, mode=0o600)
        sock.close()
        assert not os.path.exists(path)  # not on the host
        out = inst.run(["stat", "-c", "%u %g %a %F", path]).stdout.decode().strip()
        assert out == "1234 4321 600 socket"
        # A stale socket is replaced; a regular file is not clobbered.
        (await helper.bind_unix(path)).close()
        inst.run(["sh", "-c", "echo data > /tmp/file"])
        with pytest.raises(FileExistsError):
            await helper.bind_unix("/tmp/file")
        assert inst.run(["cat", "/tmp/file"]).stdout == b"data\n"
    finally:
        await helper.close()


async def test_helper_connects_with_dropped_ids_through_userns(lab: Lab) -> None:
    inst = lab.add_instance(userns=True)
    path = "/tmp/peercred.sock"
    lab.echo(inst, "unix", path, peercred=True, mode="777")
    helper = await NamespaceHelper.spawn(inst.namespaces, uid=1234, gid=1234)
    try:
        sock = await helper.connect_unix(path)
        sock.setblocking(True)
        with sock:
            assert sock.recv(100) == b"uid=1234 gid=1234\n"
    finally:
        await helper.close()


async def test_helper_reports_errors_as_oserror(lab: Lab) -> None:
    inst = lab.add_instance()
    helper = await NamespaceHelper.spawn(inst.namespaces)
    try:
        with pytest.raises(ConnectionRefusedError):
            await helper.connect_inet(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 9)
        with pytest.raises(FileNotFoundError):
            await helper.connect_unix("/tmp/nothing-here.sock")
        # The helper survives errors.
        s = await helper.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.close()
    finally:
        await helper.close()


async def test_helper_abstract_socket_is_per_netns(lab: Lab) -> None:
    inst = lab.add_instance()
    helper = await NamespaceHelper.spawn(inst.namespaces)
    try:
        name = f"@lxp-{lab.tag}"
        sock = await helper.bind_unix(name)
        with sock:
            probe = socket.socket(socket.AF_UNIX)
            with probe, pytest.raises(OSError):
                probe.connect(b"\0" + name[1:].encode())  # invisible from our netns
            assert stat.S_ISSOCK(os.fstat(sock.fileno()).st_mode)
    finally:
        await helper.close()


def test_executor_released_after_instance_died(lab: Lab) -> None:
    from lxdproxy.netns import executor as ex_mod

    inst = lab.add_instance()
    path = inst.namespaces.net
    ex = netns_executor(path)
    key = ex.identity
    inst.proc.kill()
    inst.proc.wait()
    assert not os.path.exists(path)
    ex_mod.release_netns_executor(path)
    assert key not in ex_mod._executors
