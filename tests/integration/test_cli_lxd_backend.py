"""`lxdproxy serve --lxd <socket>` end to end: the daemon's LxdBackend (real pylxd) reads an
LXD-shaped test double serving the LXD 5.0.2 captures, the CLI adds a proxy device, traffic
flows into a lab instance whose PID the double reports, and a restart is followed."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lab.daemon import shutdown_daemon, start_daemon
from lab.traffic import roundtrip
from lxdproxy.cli import main

pytestmark = pytest.mark.lab

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rest"


def _body(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())["body"]


def _sync(metadata: Any) -> web.Response:
    return web.json_response(_sync_body(metadata))


def _static(envelope: dict[str, Any]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(envelope)

    return handler


def _sync_body(metadata: Any) -> dict[str, Any]:
    return {"type": "sync", "status": "Success", "status_code": 200, "operation": "",
            "error_code": 0, "error": "", "metadata": metadata}


class FakeRealLxd:
    """The real LXD's read side for one instance ``c1``, with a PID and IP from the lab."""

    def __init__(self, pid: int, ipv4: str) -> None:
        self.record = copy.deepcopy(_body("get-instance-c1.json")["metadata"])
        for devices in (self.record["devices"], self.record["expanded_devices"]):
            devices["eth0"]["ipv4.address"] = ipv4
        self.state = copy.deepcopy(_body("get-instance-c1-state.json")["metadata"])
        self.state["pid"] = pid
        self.writes: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/1.0", _static(_body("get-1.0.json")))
        r.add_get("/1.0/instances", self.instances)
        r.add_get("/1.0/instances/{name}", self.instance)
        r.add_get("/1.0/instances/{name}/state", self.instance_state)
        r.add_get("/1.0/networks/lxdbr0", _static(_body("get-network-lxdbr0.json")))
        r.add_get("/1.0/networks", _static(_sync_body(
            [_body("get-network-lxdbr0.json")["metadata"]])))
        r.add_get("/1.0/networks/lxdbr0/forwards", _static(_sync_body([])))
        r.add_route("*", "/{tail:.*}", self.anything_else)
        return app

    async def instances(self, request: web.Request) -> web.Response:
        recursion = request.query.get("recursion", "0")
        if recursion == "0":
            return _sync(["/1.0/instances/c1"])
        full = copy.deepcopy(self.record)
        if recursion == "2":
            full["state"] = copy.deepcopy(self.state)
        return _sync([full])

    async def instance(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != "c1":
            return web.json_response({"type": "error", "error": "Instance not found",
                                      "error_code": 404, "status": "", "status_code": 0,
                                      "operation": "", "metadata": None}, status=404)
        return _sync(self.record)

    async def instance_state(self, request: web.Request) -> web.Response:
        return _sync(self.state)

    async def anything_else(self, request: web.Request) -> web.Response:
        self.writes.append(f"{request.method} {request.path}")  # lxdproxy must never write
        return web.json_response({"type": "error", "error": "not found", "error_code": 404,
                                  "status": "", "status_code": 0, "operation": "",
                                  "metadata": None}, status=404)


@pytest.fixture
def serve_fake(tmp_path: Path) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    def serve(fake: FakeRealLxd) -> str:
        sock = str(tmp_path / "lxd.socket")

        async def start() -> None:
            runner = web.AppRunner(fake.app())
            await runner.setup()
            await web.UnixSite(runner, sock).start()
            runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        return sock

    try:
        yield serve
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_daemon_on_lxd_backend(lab, tmp_path, serve_fake, lx, monkeypatch):
    inst = lab.add_instance()
    client = lab.add_client()
    fake = FakeRealLxd(inst.pid, inst.ipv4)
    lxd_sock = serve_fake(fake)
    proc, sock = start_daemon(lab, tmp_path, "--lxd", lxd_sock)
    monkeypatch.setenv("LXDPROXY_SOCKET", sock)
    try:
        old_echo = lab.echo(inst, "tcp", "127.0.0.1", 8000)
        rc, out, err = lx("config", "device", "add", "c1", "web", "proxy",
                          f"listen=tcp:{lab.host.ipv4}:8080", "connect=tcp:127.0.0.1:8000")
        assert (rc, err) == (0, "")
        assert roundtrip(client, lab.host.ipv4, 8080, b"via lxd") == b"via lxd"

        # LXD's own devices show through; the proxy device is merged in by the shim.
        assert lx("config", "device", "list", "c1")[1] == "eth0\nhostusr\nweb\n"
        # A non-proxy change is refused, not silently dropped or written to LXD.
        assert lx("config", "device", "set", "c1", "eth0", "ipv4.address=10.1.1.1") == (
            1, "", "Error: Only proxy devices can be changed through lxdproxy\n")
        assert lx("instance", "remove", "c1") == (
            1, "", "Error: Deleting instances is not supported with the LXD backend\n")

        # The instance restarts (new init PID, new namespaces): the device follows it.
        old_echo.kill()  # else the old namespaces, still held by it, would keep answering
        old_echo.wait()
        inst.restart()
        lab.echo(inst, "tcp", "127.0.0.1", 8000)
        fake.state["pid"] = inst.pid
        deadline = time.monotonic() + 30
        while True:
            try:
                if roundtrip(client, lab.host.ipv4, 8080, b"after restart") == (
                        b"after restart"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "device did not follow the restart"
            time.sleep(0.2)
        assert fake.writes == []
        assert main(["config", "device", "remove", "c1", "web"]) == 0
        with pytest.raises(ConnectionRefusedError):
            roundtrip(client, lab.host.ipv4, 8080, b"gone")
    finally:
        shutdown_daemon(proc, Path(sock))
