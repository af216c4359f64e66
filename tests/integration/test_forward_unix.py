"""unix sockets through the forwarder, in the lab: LXD checklist §7 C (unix->unix), D (tcp->unix),
E (unix->tcp), bind=instance, abstract sockets, uid/gid/mode, security.uid/gid (SO_PEERCRED),
SCM_RIGHTS, and the symlink escape."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab import Lab, _wait_ready
from lab.devices import proxy
from lab.forwarding import fd_count, roundtrip, started
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.forwarder import Forwarder

pytestmark = pytest.mark.lab


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5)
    yield f
    await f.stop_all()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any uid may traverse (pytest's tmp_path is 0700 root): security.uid tests."""
    path = Path(f"/tmp/lxp-fwd-{os.urandom(3).hex()}")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ns(lab: Lab, inst) -> dict:
    return {"listen_ns": lab.host.namespaces, "connect_ns": inst.namespaces, "instance_name": "c1"}


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
async def test_checklist_c_unix_to_unix(lab: Lab, fwd: Forwarder, tmp_path: Path,
                                        userns: bool) -> None:
    inst = lab.add_instance(userns=userns)
    host_sock = str(tmp_path / "host.sock")
    lab.echo(inst, "unix", "/tmp/c.sock", peercred=True, mode="777")
    cfg = {"listen": f"unix:{host_sock}", "uid": "1234", "gid": "1234", "security_uid": "1234",
           "security_gid": "1234", "bind": "host"}
    # C1: echo OK; the backend sees security.uid/gid - mapped through the instance's id map
    # (with a user namespace a host-side setuid(1234) would show up as the overflow id 65534).
    key = await started(fwd, "p", proxy(**cfg, connect="unix:/tmp/c.sock"), host=lab.host,
                        inst=inst)
    st = os.stat(host_sock)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1234, 0o644)
    assert await roundtrip(None, host_sock, b"C1") == b"uid=1234 gid=1234\nC1"
    # C2: rm host socket; restart -f; new server -> the socket is re-created.
    os.unlink(host_sock)
    await asyncio.to_thread(inst.restart)
    lab.echo(inst, "unix", "/tmp/c.sock", peercred=True, mode="777")
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    assert await roundtrip(None, host_sock, b"C2") == b"uid=1234 gid=1234\nC2"
    # C3: rm host socket; server on c-2.sock; device set connect.
    os.unlink(host_sock)
    lab.echo(inst, "unix", "/tmp/c-2.sock", mode="777", tag=True)
    await fwd.start(key, proxy(**cfg, connect="unix:/tmp/c-2.sock"), **_ns(lab, inst))
    assert await roundtrip(None, host_sock, b"C3") == b"unix:C3"
    # C4: device remove -> the host socket is gone.
    await fwd.stop(key)
    assert not os.path.exists(host_sock)


async def test_checklist_d_tcp_to_unix(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "unix", "/tmp/d.sock", reply_after_eof=True)  # + half-close over tcp->unix
    key = await started(fwd, "p", proxy(listen="tcp:127.0.0.1:1234", connect="unix:/tmp/d.sock"),
                        host=lab.host, inst=inst)
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"D1") == b"D1"
    await asyncio.to_thread(inst.restart)
    lab.echo(inst, "unix", "/tmp/d.sock")
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"D2") == b"D2"
    lab.echo(inst, "unix", "/tmp/d-2.sock", tag=True)
    await fwd.start(key, proxy(listen="tcp:127.0.0.1:1234", connect="unix:/tmp/d-2.sock"),
                     **_ns(lab, inst))
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"D3") == b"unix:D3"


async def test_checklist_e_unix_to_tcp(lab: Lab, fwd: Forwarder, tmp_path: Path) -> None:
    inst = lab.add_instance()
    host_sock = str(tmp_path / "e.sock")
    lab.echo(inst, "tcp", "127.0.0.1", 4321, reply_after_eof=True)  # + half-close unix->tcp
    key = await started(fwd, "p", proxy(listen=f"unix:{host_sock}", connect="tcp:127.0.0.1:4321",
                                        bind="host"), host=lab.host, inst=inst)
    assert await roundtrip(None, host_sock, b"E1") == b"E1"
    os.unlink(host_sock)
    await asyncio.to_thread(inst.restart)
    lab.echo(inst, "tcp", "127.0.0.1", 4321)
    await fwd.start(key, fwd.device(key), listen_ns=lab.host.namespaces,
                    connect_ns=inst.namespaces, instance_name="c1")
    assert await roundtrip(None, host_sock, b"E2") == b"E2"
    os.unlink(host_sock)
    lab.echo(inst, "tcp", "127.0.0.1", 1337, tag=True)
    await fwd.start(key, proxy(listen=f"unix:{host_sock}", connect="tcp:127.0.0.1:1337",
                                bind="host"), **_ns(lab, inst))
    assert await roundtrip(None, host_sock, b"E3") == b"1337:E3"


async def test_stale_file_at_the_listen_path_is_replaced(
    lab: Lab, fwd: Forwarder, tmp_path: Path
) -> None:
    inst = lab.add_instance()
    host_sock = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(host_sock)  # a dead socket file from an earlier run
    leftover.close()
    lab.echo(inst, "unix", "/tmp/x.sock")
    await started(fwd, "p", proxy(listen=f"unix:{host_sock}", connect="unix:/tmp/x.sock"),
                  host=lab.host, inst=inst)
    assert await roundtrip(None, host_sock, b"fresh") == b"fresh"


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
async def test_bind_instance_unix_listener_gets_instance_ids_and_security_ids_on_host(
    lab: Lab, fwd: Forwarder, open_dir: Path, userns: bool
) -> None:
    # Incus's bind=container test, with a unix listener inside: uid/gid/mode are applied in the
    # instance's namespaces (instance ids), the host backend sees security.uid/gid as is.
    inst = lab.add_instance(userns=userns)
    backend = str(open_dir / "backend.sock")
    lab.echo(lab.host, "unix", backend, peercred=True, mode="777")
    await started(fwd, "p", proxy(listen="unix:/tmp/in.sock", connect=f"unix:{backend}",
                                  bind="instance", uid="1000", gid="1001", mode="0660",
                                  security_uid="1234", security_gid="1234"),
                  host=lab.host, inst=inst)
    out = (await asyncio.to_thread(inst.run, ["stat", "-c", "%u %g %a", "/tmp/in.sock"])).stdout
    assert out.split() == [b"1000", b"1001", b"660"]
    reply = await asyncio.to_thread(
        inst.run, ["sh", "-c", "printf inside | socat - UNIX-CONNECT:/tmp/in.sock"])
    assert reply.stdout == b"uid=1234 gid=1234\ninside"
    # Seen from the host (test-only peek), the ids went through the instance's id map.
    st = os.stat(f"/proc/{inst.pid}/root/tmp/in.sock")
    assert (st.st_uid, st.st_gid) == ((101000, 101001) if userns else (1000, 1001))


async def test_tcp_bind_instance_to_host_unix(lab: Lab, fwd: Forwarder, tmp_path: Path) -> None:
    inst = lab.add_instance()
    backend = str(tmp_path / "b.sock")
    lab.echo(lab.host, "unix", backend, reply_after_eof=True)
    await started(fwd, "p", proxy(listen="tcp:0.0.0.0:4321", connect=f"unix:{backend}",
                                  bind="instance"), host=lab.host, inst=inst)
    assert await roundtrip(inst, ("127.0.0.1", 4321), b"in->host") == b"in->host"
    assert await roundtrip(inst, ("::1", 4321), b"v6") == b"v6"


async def test_abstract_sockets_live_in_their_network_namespace(
    lab: Lab, fwd: Forwarder
) -> None:
    inst = lab.add_instance()
    name = f"lxp-{lab.tag}"
    lab.echo(inst, "unix", f"@{name}-backend")
    await started(fwd, "p", proxy(listen=f"unix:@{name}-front", connect=f"unix:@{name}-backend"),
                  host=lab.host, inst=inst)
    assert await roundtrip(lab.host, f"@{name}-front", b"abstract") == b"abstract"
    with pytest.raises(ConnectionRefusedError):
        await roundtrip(inst, f"@{name}-front")  # the listener is in the host side's netns


_FD_BACKEND = r"""
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen()
print("READY", flush=True)
while True:
    c, _ = s.accept()
    msg, fds, _flags, _addr = socket.recv_fds(c, 100, 16)
    for fd in fds:
        os.write(fd, b"written by the instance")
        os.close(fd)
    c.sendall(b"%s: got %d fds" % (msg, len(fds)))
    c.close()
"""


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # also on the daemon's loop
async def test_scm_rights_travel_through_unix_to_unix(
    lab: Lab, fwd: Forwarder, tmp_path: Path
) -> None:
    inst = lab.add_instance()
    proc = inst.popen([sys.executable, "-c", _FD_BACKEND, "/tmp/fd.sock"],
                      stdout=__import__("subprocess").PIPE)
    await asyncio.to_thread(_wait_ready, proc, "fd backend")
    host_sock = str(tmp_path / "fd.sock")
    await started(fwd, "p", proxy(listen=f"unix:{host_sock}", connect="unix:/tmp/fd.sock"),
                  host=lab.host, inst=inst)
    r, w = os.pipe()
    baseline = fd_count()

    def exchange() -> bytes:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(host_sock)
            socket.send_fds(c, [b"pipe"], [w])
            return c.recv(100)

    assert await asyncio.to_thread(exchange) == b"pipe: got 1 fds"
    os.close(w)
    assert os.read(r, 100) == b"written by the instance"
    os.close(r)
    await asyncio.sleep(0)  # let the relay see the close
    for _ in range(100):
        if fwd.open_connections() == 0:
            break
        await asyncio.sleep(0.02)
    assert fd_count() == baseline - 2  # our copies of the passed fd were closed too


async def test_symlinked_path_is_resolved_inside_the_instance_never_on_the_host(
    lab: Lab, fwd: Forwarder
) -> None:
    """The instance replaces a directory with a symlink to an absolute path that also exists on
    the host (/tmp/<x>: the instance has its own /tmp). Resolving through /proc/<pid>/root would
    follow it to the *host's* /tmp/<x> and reach (or create) a host socket."""
    inst = lab.add_instance()
    shared = f"/tmp/lxp-victim-{lab.tag}"
    os.mkdir(shared)
    try:
        victim = lab.host.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        victim.bind(f"{shared}/x.sock")  # a host service a wrong implementation would reach
        victim.listen()
        victim.setblocking(False)
        await asyncio.to_thread(inst.run, ["sh", "-c", f"mkdir -p {shared} && ln -s {shared} /tmp/d"])
        lab.echo(inst, "unix", f"{shared}/x.sock", tag=True)
        # connect side: /tmp/d/x.sock inside the instance
        await started(fwd, "c", proxy(listen="tcp:127.0.0.1:1234", connect="unix:/tmp/d/x.sock"),
                      host=lab.host, inst=inst)
        assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"who?") == b"unix:who?"
        with pytest.raises(BlockingIOError):
            victim.accept()  # the host service never saw a connection
        # listen side (bind=instance): the socket is created in the instance's /tmp only
        lab.echo(lab.host, "tcp", "127.0.0.1", 4321)
        await started(fwd, "l", proxy(listen="unix:/tmp/d/l.sock", connect="tcp:127.0.0.1:4321",
                                      bind="instance"), host=lab.host, inst=inst)
        assert not os.path.exists(f"{shared}/l.sock")
        assert (await asyncio.to_thread(inst.run, ["test", "-S", f"{shared}/l.sock"],
                                        check=False)).returncode == 0
        victim.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def test_a_non_socket_file_at_the_listen_path_is_not_deleted(
    lab: Lab, fwd: Forwarder, tmp_path: Path
) -> None:
    # LXD unlinks whatever is at the listen path (spec §9.11); we replace only a stale socket.
    inst = lab.add_instance()
    precious = tmp_path / "data.txt"
    precious.write_text("keep me")
    with pytest.raises(DeviceStartError) as err:
        await started(fwd, "p", proxy(listen=f"unix:{precious}", connect="tcp:127.0.0.1:1"),
                      host=lab.host, inst=inst)
    assert str(err.value) == (
        f"Error occurred when starting proxy device: Error: Failed listening on {precious}: "
        f"listen unix {precious}: bind: {precious} exists and is not a socket")
    assert precious.read_text() == "keep me"
