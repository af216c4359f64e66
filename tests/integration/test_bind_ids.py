"""user.lxdproxy.security.bind_uid/bind_gid (issue 11, part 2), in the lab with real sockets:
the listen side's sockets are made with those ids, so the kernel's checks decide; through the
in-process Forwarder and through the worker pool alike."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab import Lab, LabInstance
from lab.devices import proxy
from lab.forwarding import roundtrip, started
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.workers import WorkerPool

pytestmark = pytest.mark.lab

BIND_UID = "user.lxdproxy.security.bind_uid"
BIND_GID = "user.lxdproxy.security.bind_gid"
AS_1000 = {BIND_UID: "1000", BIND_GID: "1000"}
TCP_LISTEN_STATE = "0A"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Under /run, not /tmp: uid 1000 must be able to walk down to it (pytest's tmp_path is in a
    # 0700 directory), and lab instances have a private /tmp.
    path = Path(f"/run/lxp-bind-{os.urandom(3).hex()}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["forwarder", "pool"])
async def plane(request: pytest.FixtureRequest) -> AsyncIterator[Forwarder | WorkerPool]:
    if request.param == "forwarder":
        fwd = Forwarder(connect_timeout=5)
        yield fwd
        await fwd.stop_all()
        return
    state = Path(tempfile.mkdtemp(prefix="lxpb"))
    pool = WorkerPool(state, workers=1)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.shutdown()
        shutil.rmtree(state, ignore_errors=True)


def start(plane: Forwarder | WorkerPool, lab: Lab, inst: LabInstance, name: str,
          **config: str) -> asyncio.Future[tuple[str, str]]:
    return asyncio.ensure_future(
        started(plane, name, proxy(**config), host=lab.host, inst=inst))  # type: ignore[arg-type]


def peer_credentials(path: Path) -> tuple[int, int, int]:
    """(pid, uid, gid) of whoever called listen() on the socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        sock.connect(str(path))
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def listener_uids(place: object, table: str, port: int) -> list[int]:
    """The uid column of /proc/net/<table> for sockets on local ``port``, read inside ``place``
    (its netns and, for a user-namespaced instance, its user namespace: uids as it maps them)."""
    out = place.run(["cat", f"/proc/net/{table}"]).stdout.decode()  # type: ignore[attr-defined]
    uids = []
    for line in out.splitlines()[1:]:
        fields = line.split()
        local, state, uid = fields[1], fields[3], int(fields[7])
        if int(local.rsplit(":", 1)[1], 16) == port and (table.startswith("udp")
                                                         or state == TCP_LISTEN_STATE):
            uids.append(uid)
    return uids


async def test_unix_path_in_a_root_only_directory_is_refused(
        lab: Lab, plane: Forwarder | WorkerPool, run_dir: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    path = run_dir / "s.sock"  # run_dir: root's, 0755
    with pytest.raises(DeviceStartError) as err:
        await start(plane, lab, inst, "p", listen=f"unix:{path}",
                    connect="tcp:127.0.0.1:9000", **AS_1000)
    message = err.value.message
    assert f"listen unix {path}: bind: permission denied" in message
    assert "made as uid 1000, gid 1000" in message
    assert not path.exists()
    assert not plane.active(("c1", "p"))
    # Root (no bind ids) may: the refusal was the kernel's answer to uid 1000.
    await start(plane, lab, inst, "p", listen=f"unix:{path}", connect="tcp:127.0.0.1:9000")
    assert await roundtrip(None, str(path), b"ping") == b"ping"


async def test_unix_path_in_a_directory_of_uid_1000_works_and_listens_as_1000(
        lab: Lab, plane: Forwarder | WorkerPool, run_dir: Path) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    mine = run_dir / "u1000"
    mine.mkdir(mode=0o755)
    os.chown(mine, 1000, 1000)
    path = mine / "s.sock"
    await start(plane, lab, inst, "p", listen=f"unix:{path}", connect="tcp:127.0.0.1:9000",
                uid="1000", mode="0660", **AS_1000)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o660)
    _pid, uid, gid = await asyncio.to_thread(peer_credentials, path)
    assert (uid, gid) == (1000, 1000)
    assert await roundtrip(None, str(path), b"ping") == b"ping"
    await plane.stop(("c1", "p"))
    assert not path.exists()


async def test_tcp_and_udp_listeners_belong_to_uid_1000_in_their_namespace(
        lab: Lab, plane: Forwarder | WorkerPool) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    await start(plane, lab, inst, "t", listen="tcp:127.0.0.1:1234",
                connect="tcp:127.0.0.1:9000", **AS_1000)
    await start(plane, lab, inst, "u", listen="udp:0.0.0.0:1235", connect="udp:127.0.0.1:9001",
                **{BIND_UID: "1000"})
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"ping") == b"ping"
    assert await asyncio.to_thread(listener_uids, lab.host, "tcp", 1234) == [1000]
    assert await asyncio.to_thread(listener_uids, lab.host, "udp6", 1235) == [1000]
    # Without the keys the listener is root's, as before (so the test above can fail).
    await start(plane, lab, inst, "r", listen="tcp:127.0.0.1:1236", connect="tcp:127.0.0.1:9000")
    assert await asyncio.to_thread(listener_uids, lab.host, "tcp", 1236) == [0]


async def test_bind_ids_go_through_the_instance_id_map(
        lab: Lab, plane: Forwarder | WorkerPool) -> None:
    inst = lab.add_instance(userns=True)  # instance uid 0 is 100000 on the host
    await asyncio.to_thread(lab.echo, lab.host, "tcp", "127.0.0.1", 9000)
    await start(plane, lab, inst, "p", bind="instance", listen="tcp:127.0.0.1:1234",
                connect="tcp:127.0.0.1:9000", **AS_1000)
    assert await roundtrip(inst, ("127.0.0.1", 1234), b"ping") == b"ping"
    assert await asyncio.to_thread(listener_uids, inst, "tcp", 1234) == [1000]
    # Read from outside the instance's user namespace, the same socket is the host's uid 101000.
    host_view = (await asyncio.to_thread(
        subprocess.run, ["nsenter", "-t", str(inst.pid), "-n", "cat", "/proc/net/tcp"],
        check=True, capture_output=True)).stdout.decode()
    assert any(line.split()[7] == "101000" for line in host_view.splitlines()[1:]
               if line.split()[1].endswith(":04D2"))


async def test_a_low_port_names_cap_net_bind_service(
        lab: Lab, plane: Forwarder | WorkerPool) -> None:
    inst = lab.add_instance()
    with pytest.raises(DeviceStartError) as err:
        await start(plane, lab, inst, "p", listen="tcp:127.0.0.1:80",
                    connect="tcp:127.0.0.1:9000", **{BIND_UID: "1000"})
    message = err.value.message
    assert "Failed listening on 127.0.0.1:80: listen tcp 127.0.0.1:80: bind: permission denied" \
        in message
    assert "CAP_NET_BIND_SERVICE" in message and "uid 1000, gid 0" in message
    assert not plane.active(("c1", "p"))


async def test_changing_bind_uid_makes_a_new_listener(lab: Lab,
                                                      plane: Forwarder | WorkerPool) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    tcp = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:127.0.0.1:9000"}
    await start(plane, lab, inst, "p", **tcp, **{BIND_UID: "1000"})
    assert await asyncio.to_thread(listener_uids, lab.host, "tcp", 1234) == [1000]
    await start(plane, lab, inst, "p", **tcp, **{BIND_UID: "1001"})
    assert await asyncio.to_thread(listener_uids, lab.host, "tcp", 1234) == [1001]
    assert await roundtrip(lab.host, ("127.0.0.1", 1234), b"ping") == b"ping"
