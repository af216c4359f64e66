"""Unix listen paths (issue 12, failure 2), in the lab with real sockets: a socket another
program listens on is never taken over, stop removes only the file this device made, and the
daemon's API socket and state directory are refused, on the host and inside an instance."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab.traffic import unix_roundtrip
from lxdproxy.config import validate_proxy_device
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.netns.protected_paths import ProtectedPaths

pytestmark = pytest.mark.lab


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Under /run, not /tmp: lab instances have a private /tmp but see the host's /run.
    path = Path(f"/run/lxp-guard-{os.urandom(3).hex()}")
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fwd(state_dir: Path) -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5,
                  protected_paths=ProtectedPaths.of_daemon(state_dir, state_dir / "unix.socket"))
    yield f
    await f.stop_all()


async def start(fwd: Forwarder, lab: Lab, inst: Any, name: str, **config: str) -> None:
    device = validate_proxy_device({"type": "proxy", **config})
    host, other = lab.host.namespaces, inst.namespaces
    listen_ns, connect_ns = (host, other) if device.bind.value == "host" else (other, host)
    await fwd.start(("c1", name), device, listen_ns=listen_ns, connect_ns=connect_ns,
                    instance_name="c1")


def live_echo(path: Path) -> tuple[socket.socket, asyncio.Task[None]]:
    """Another program's unix service: answers b"mine" to every client."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    if conn.recv(100):  # the daemon's probe connects and closes at once
                        conn.sendall(b"mine")
                except OSError:
                    pass

    return server, asyncio.get_running_loop().run_in_executor(None, serve)  # type: ignore[return-value]


async def test_live_socket_of_another_program_is_refused_and_kept(lab: Lab, fwd: Forwarder,
                                                                  tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    live = tmp_path / "live.sock"
    server, serving = live_echo(live)
    try:
        with pytest.raises(DeviceStartError) as err:
            await start(fwd, lab, inst, "p", listen=f"unix:{live}", connect="tcp:127.0.0.1:9000")
        assert f"{live} is in use: another program is listening on it" in err.value.message
        assert not fwd.active(("c1", "p"))
        assert await asyncio.to_thread(unix_roundtrip, str(live)) == b"mine"
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        await serving
    # Nobody accepts on it any more: a stale socket is replaced, as before.
    await start(fwd, lab, inst, "p", listen=f"unix:{live}", connect="tcp:127.0.0.1:9000")
    assert await asyncio.to_thread(unix_roundtrip, str(live)) == b"ping"


async def test_live_socket_inside_the_instance_is_refused_and_kept(lab: Lab, fwd: Forwarder) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "unix", "/tmp/live.sock")
    with pytest.raises(DeviceStartError) as err:
        await start(fwd, lab, inst, "p", listen="unix:/tmp/live.sock", bind="instance",
                    connect="tcp:127.0.0.1:9000")
    assert "/tmp/live.sock is in use: another program is listening on it" in err.value.message
    # The instance's service still owns its socket: reach it through a host-side device.
    await start(fwd, lab, inst, "q", listen="tcp:127.0.0.1:7100", connect="unix:/tmp/live.sock")
    sock = await asyncio.to_thread(lab.host.socket, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await asyncio.to_thread(sock.connect, ("127.0.0.1", 7100))
        await asyncio.to_thread(sock.sendall, b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert await asyncio.to_thread(sock.recv, 100) == b"ping"


async def test_stop_leaves_a_socket_someone_put_there_since(lab: Lab, fwd: Forwarder,
                                                           tmp_path: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    path = tmp_path / "dev.sock"
    await start(fwd, lab, inst, "p", listen=f"unix:{path}", connect="tcp:127.0.0.1:9000")
    path.unlink()
    server, serving = live_echo(path)  # another program takes the path while the device runs
    try:
        await fwd.stop(("c1", "p"))
        assert path.exists()
        assert await asyncio.to_thread(unix_roundtrip, str(path)) == b"mine"
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        await serving
    # Its own file, untouched, is removed on stop (LXD does this for bind=host).
    path.unlink()
    await start(fwd, lab, inst, "p", listen=f"unix:{path}", connect="tcp:127.0.0.1:9000")
    await fwd.stop(("c1", "p"))
    assert not path.exists()


@pytest.mark.parametrize("where", ["api-socket", "inside", "nested", "symlink"])
async def test_daemon_paths_are_refused_on_the_host(lab: Lab, fwd: Forwarder, state_dir: Path,
                                                    tmp_path: Path, where: str) -> None:
    inst = lab.add_instance()
    (state_dir / "sub").mkdir()
    (tmp_path / "link").symlink_to(state_dir)
    path, reason = {
        "api-socket": (state_dir / "unix.socket", "is the daemon's API socket"),
        "inside": (state_dir / "evil.sock", "is inside the daemon's state directory"),
        "nested": (state_dir / "sub" / "evil.sock", "is inside the daemon's state directory"),
        "symlink": (tmp_path / "link" / "evil.sock", "is inside the daemon's state directory"),
    }[where]
    with pytest.raises(DeviceStartError) as err:
        await start(fwd, lab, inst, "p", listen=f"unix:{path}", connect="tcp:127.0.0.1:9000")
    assert f"{path} {reason}" in err.value.message
    assert sorted(os.listdir(state_dir)) == ["sub"]


async def test_daemon_paths_are_refused_inside_an_instance_that_sees_them(
        lab: Lab, fwd: Forwarder, state_dir: Path) -> None:
    inst = lab.add_instance()  # its mount namespace is a copy of ours: /run is the same tree
    await asyncio.to_thread(inst.run, ["ln", "-s", str(state_dir), "/tmp/innocent"])
    for path in (f"{state_dir}/unix.socket", "/tmp/innocent/evil.sock"):
        with pytest.raises(DeviceStartError) as err:
            await start(fwd, lab, inst, "p", listen=f"unix:{path}", bind="instance",
                        connect="tcp:127.0.0.1:9000")
        assert path in err.value.message
    assert os.listdir(state_dir) == []


def test_daemon_refuses_its_api_socket_and_a_live_socket(lab: Lab, tmp_path: Path) -> None:
    from pylxd import Client
    from pylxd.exceptions import LXDAPIException

    from lab.daemon import RunningDaemon

    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen()
    daemon = RunningDaemon(lab, tmp_path / "state").start()
    try:
        client = Client(endpoint=str(daemon.socket))
        client.instances.create({"name": "c1", "source": {"type": "none"},
                                 "config": {"user.lxdproxy.pid": str(inst.pid)}}, wait=True)
        for path, reason in ((daemon.socket, "is the daemon's API socket"),
                             (daemon.state_dir / "x.sock", "is inside the daemon's state directory"),
                             (tmp_path / "live.sock", "is in use: another program is listening on it")):
            c1 = client.instances.get("c1")
            c1.devices["p"] = {"type": "proxy", "listen": f"unix:{path}",
                               "connect": "tcp:127.0.0.1:9000"}
            with pytest.raises(LXDAPIException) as err:
                c1.save(wait=True)
            assert f"{path} {reason}" in str(err.value)
            assert "p" not in client.instances.get("c1").devices  # the API still answers
        assert not (daemon.state_dir / "x.sock").exists()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(tmp_path / "live.sock"))  # the other program kept its socket
        accepted, _ = live.accept()
        accepted.close()
        conn.close()
    finally:
        daemon.stop()
        live.close()
