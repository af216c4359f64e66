"""A GiB each way through each stream pair (issue 10's acceptance), in the lab.

Both ends (lab.bulk, separate processes: the relay under test runs on this test's loop, so the
ends must not compete with it for the GIL) send 1 GiB at once and hash what they read; each block
carries its index, so a chunk the relay lost, repeated or reordered changes the hash. The relay
is the Forwarder's, on uvloop (the daemon's loop): splice for the pairs with a tcp end (past
SPLICE_AFTER), recvmsg/sendmsg for unix -> unix.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab, _wait_ready, bulk
from lab.devices import proxy
from lab.forwarding import started
from lxdproxy.forward.forwarder import Forwarder

pytestmark = pytest.mark.lab

GIB = 1 << 30
# listen (on the host), connect (in the instance); {sock} is a host path
PAIRS = {
    "tcp-tcp": ("tcp:127.0.0.1:1234", "tcp:127.0.0.1:4321"),
    "tcp-unix": ("tcp:127.0.0.1:1234", "unix:/tmp/gib.sock"),
    "unix-tcp": ("unix:{sock}", "tcp:127.0.0.1:4321"),
    "unix-unix": ("unix:{sock}", "unix:/tmp/gib.sock"),
}


@pytest.fixture
async def fwd() -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5)
    yield f
    await f.stop_all()


@pytest.fixture(scope="module")
def gib_sha1() -> str:
    return bulk.expected_sha1(GIB)


def _bulk_args(address: str) -> list[str]:
    """lab.bulk's PROTO ADDR [PORT] for a device address."""
    proto, _, rest = address.partition(":")
    if proto == "unix":
        return ["unix", rest]
    host, _, port = rest.rpartition(":")
    return ["tcp", host, port]


def _result(proc: subprocess.Popen[bytes], what: str) -> dict[str, object]:
    out, _ = proc.communicate(timeout=180)
    lines = out.decode().splitlines()
    assert proc.returncode == 0 and lines, f"{what} failed (exit {proc.returncode}): {out[-500:]!r}"
    return json.loads(lines[-1])


@pytest.mark.asyncio(loop_factories=["uvloop"])
@pytest.mark.parametrize("pair", list(PAIRS))
async def test_a_gib_each_way_arrives_intact(lab: Lab, fwd: Forwarder, tmp_path: Path,
                                             gib_sha1: str, pair: str) -> None:
    inst = lab.add_instance()
    listen, connect = PAIRS[pair]
    listen = listen.format(sock=tmp_path / "gib.sock")
    size = ["--bytes", str(GIB)]
    server = inst.python(bulk.__file__, "listen", *_bulk_args(connect), *size, stdout=subprocess.PIPE)
    _wait_ready(server, "lab.bulk listener")
    key = await started(fwd, "p", proxy(listen=listen, connect=connect, bind="host"),
                        host=lab.host, inst=inst)
    client = lab.host.python(bulk.__file__, "connect", *_bulk_args(listen), *size,
                             stdout=subprocess.PIPE)
    at_client, at_target = await asyncio.gather(
        asyncio.to_thread(_result, client, "client"), asyncio.to_thread(_result, server, "target"))
    assert at_target == {"sent": GIB, "received": GIB, "sha1": gib_sha1}  # client -> target
    assert at_client == {"sent": GIB, "received": GIB, "sha1": gib_sha1}  # target -> client
    counters = fwd.device_counters()[key]
    assert (counters["bytes_in"], counters["bytes_out"]) == (GIB, GIB)
