"""A GiB each way through each stream pair (issue 10's acceptance), in the lab.

Both ends (lab.bulk, separate processes: the relay under test runs on this test's loop, so the
ends must not compete with it for the GIL) send 1 GiB at once and hash what they read; each block
carries its index, so a chunk the relay lost, repeated or reordered changes the hash. The relay
is the Forwarder's, on uvloop (the daemon's loop), in each relay mode a pair can take: 1 MiB
copies (the default) and splice (``--relay splice``, past SPLICE_AFTER) for the pairs with a tcp
end; unix -> unix always relays with recvmsg/sendmsg (its fds travel with the bytes).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab, _wait_ready, bulk
from lab.devices import proxy
from lab.forwarding import started
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.forward.stream_relay import RelayMode

pytestmark = pytest.mark.lab

GIB = 1 << 30
# listen (on the host), connect (in the instance); {sock} is a host path
PAIRS = {
    "tcp-tcp": ("tcp:127.0.0.1:1234", "tcp:127.0.0.1:4321"),
    "tcp-unix": ("tcp:127.0.0.1:1234", "unix:/tmp/gib.sock"),
    "unix-tcp": ("unix:{sock}", "tcp:127.0.0.1:4321"),
    "unix-unix": ("unix:{sock}", "unix:/tmp/gib.sock"),
}


CASES = [(pair, mode) for pair in PAIRS for mode in (RelayMode.COPY, RelayMode.SPLICE)
         if pair != "unix-unix" or mode is RelayMode.COPY]


@pytest.fixture
async def fwd(case: tuple[str, RelayMode]) -> AsyncIterator[Forwarder]:
    f = Forwarder(connect_timeout=5, relay=case[1])
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


def _pipes() -> int:
    """Pipes this process holds open now (each end counts)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:  # closed since the listing (the listing's own fd, among others)
            pass
    return n


def _result(proc: subprocess.Popen[bytes], what: str) -> dict[str, object]:
    out, _ = proc.communicate(timeout=180)
    lines = out.decode().splitlines()
    assert proc.returncode == 0 and lines, f"{what} failed (exit {proc.returncode}): {out[-500:]!r}"
    return json.loads(lines[-1])


@pytest.mark.asyncio(loop_factories=["uvloop"])
@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{m.value}" for p, m in CASES])
async def test_a_gib_each_way_arrives_intact(lab: Lab, fwd: Forwarder, tmp_path: Path,
                                             gib_sha1: str, case: tuple[str, RelayMode]) -> None:
    inst = lab.add_instance()
    pair, mode = case
    listen, connect = PAIRS[pair]
    listen = listen.format(sock=tmp_path / "gib.sock")
    size = ["--bytes", str(GIB)]
    server = inst.python(bulk.__file__, "listen", *_bulk_args(connect), *size, stdout=subprocess.PIPE)
    _wait_ready(server, "lab.bulk listener")
    key = await started(fwd, "p", proxy(listen=listen, connect=connect, bind="host"),
                        host=lab.host, inst=inst)
    client = lab.host.python(bulk.__file__, "connect", *_bulk_args(listen), *size,
                             stdout=subprocess.PIPE)
    pipes: list[int] = []

    async def count_pipes() -> None:
        while True:
            pipes.append(_pipes() - pipes_before)
            await asyncio.sleep(0.05)

    pipes_before = _pipes()
    sampler = asyncio.ensure_future(count_pipes())
    try:
        at_client, at_target = await asyncio.gather(
            asyncio.to_thread(_result, client, "client"), asyncio.to_thread(_result, server, "target"))
    finally:
        sampler.cancel()
    assert at_target == {"sent": GIB, "received": GIB, "sha1": gib_sha1}  # client -> target
    assert at_client == {"sent": GIB, "received": GIB, "sha1": gib_sha1}  # target -> client
    counters = fwd.device_counters()[key]
    assert (counters["bytes_in"], counters["bytes_out"]) == (GIB, GIB)
    # The mode really used: a splicing relay holds a pipe per direction while it moves bytes.
    assert max(pipes) == (2 * 2 if mode is RelayMode.SPLICE else 0)
