"""The CLI's side of the protocol, against an LXD-shaped test double on a unix socket (a process
boundary stand-in for the daemon): If-Match, operations that need /wait, failed operations,
profile-inherited devices (the local daemon has no profile devices), and the trust commands."""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lxdproxy.api.tls import TrustStore, generate_self_signed
from lxdproxy.cli import main
from lxdproxy.cli.config_commands import devices_yaml, parse_set_arguments, yaml_scalar

ENVELOPE = {"type": "sync", "status": "Success", "status_code": 200, "operation": "",
            "error_code": 0, "error": ""}


def error(message: str, status: int) -> web.Response:
    return web.json_response({"type": "error", "status": "", "status_code": 0, "operation": "",
                              "error_code": status, "error": message, "metadata": None},
                             status=status)


class FakeLxd:
    """Just enough of the LXD API, with LXD's shapes, recording what the client sent."""

    def __init__(self) -> None:
        self.instance: dict[str, Any] = {
            "architecture": "x86_64", "config": {"user.lxdproxy.pid": "1"},
            "devices": {"web": {"type": "proxy", "listen": "tcp:198.18.0.1:80",
                                "connect": "tcp:127.0.0.1:80"}},
            "ephemeral": False, "profiles": ["default"], "stateful": False, "description": "",
            "created_at": "2026-11-24T20:39:53Z", "expanded_config": {},
            "expanded_devices": {}, "name": "c1", "status": "Running", "status_code": 103,
            "last_used_at": "2026-11-24T20:39:53Z", "location": "none", "type": "container",
            "project": "default",
        }
        self.profile_devices = {"eth0": {"type": "nic", "network": "lxdbr0", "name": "eth0"}}
        self.etag = "e1"
        self.puts: list[tuple[str | None, dict[str, Any]]] = []
        self.ops: dict[str, dict[str, Any]] = {}
        self.race_etag: str | None = None
        self._expand()

    def _expand(self) -> None:
        self.instance["expanded_devices"] = {**copy.deepcopy(self.profile_devices),
                                             **copy.deepcopy(self.instance["devices"])}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/1.0/instances/{name}", self.get_instance)
        app.router.add_put("/1.0/instances/{name}", self.put_instance)
        app.router.add_get("/1.0/operations/{id}/wait", self.wait)
        return app

    async def get_instance(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != "c1":
            return error("Instance not found", 404)
        response = web.json_response({**ENVELOPE, "metadata": self.instance},
                                     headers={"ETag": f'"{self.etag}"'})
        if self.race_etag:  # someone else writes right after our GET
            self.etag = self.race_etag
        return response

    async def put_instance(self, request: web.Request) -> web.Response:
        body = await request.json()
        if_match = request.headers.get("If-Match")
        self.puts.append((if_match, body))
        if if_match and if_match.strip('"') != self.etag:
            return error(f"ETag does not match: {if_match.strip(chr(34))} vs {self.etag}. The "
                         "configuration has been modified since this change began. Please "
                         "retrieve the updated configuration before proceeding.", 412)
        op_id = str(uuid.uuid4())
        failed = "failme" in body.get("devices", {})
        final = {"id": op_id, "class": "task", "description": "Updating instance",
                 "status": "Failure" if failed else "Success",
                 "status_code": 400 if failed else 200, "metadata": None, "may_cancel": False,
                 "err": 'Failed to start device "failme": boom' if failed else "",
                 "resources": {"instances": ["/1.0/instances/c1"]}, "location": "none"}
        self.ops[op_id] = final
        if not failed:
            self.instance["devices"] = body["devices"]
            self._expand()
            self.etag = f"e{len(self.puts) + 1}"
        # Still running in the 202 reply: the client has to wait on the operation.
        running = {**final, "status": "Running", "status_code": 103, "err": ""}
        return web.json_response(
            {"type": "async", "status": "Operation created", "status_code": 100,
             "operation": f"/1.0/operations/{op_id}", "error_code": 0, "error": "",
             "metadata": running}, status=202)

    async def wait(self, request: web.Request) -> web.Response:
        op = self.ops.get(request.match_info["id"])
        if op is None:
            return error("Operation not found", 404)
        return web.json_response({**ENVELOPE, "metadata": op})


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLxd]:
    """Serve FakeLxd on a unix socket from a thread (the CLI under test is synchronous)."""
    fake = FakeLxd()
    sock = str(tmp_path / "fake.socket")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, sock).start()
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    monkeypatch.setenv("LXDPROXY_SOCKET", sock)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def lx(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_override_sends_writable_object_with_if_match_and_waits(fake, capsys):
    assert lx(capsys, "config", "device", "override", "c1", "eth0",
              "ipv4.address=198.18.0.10") == (0, "Device eth0 overridden for c1\n", "")
    if_match, body = fake.puts[-1]
    assert if_match == '"e1"'  # echoed exactly as received, like lxc
    assert sorted(body) == sorted(["architecture", "config", "devices", "ephemeral",
                                   "profiles", "stateful", "description"])
    assert body["devices"]["eth0"] == {"type": "nic", "network": "lxdbr0", "name": "eth0",
                                       "ipv4.address": "198.18.0.10"}
    assert body["devices"]["web"] == fake.instance["devices"]["web"]
    assert "eth0" in fake.instance["devices"]  # the operation was applied


def test_profile_devices_get_lxcs_messages(fake, capsys):
    msg = ("Error: Device from profile(s) cannot be {} for individual instance. "
           "Override device or modify profile instead\n")
    assert lx(capsys, "config", "device", "set", "c1", "eth0", "mtu=1400") == (
        1, "", msg.format("modified"))
    assert lx(capsys, "config", "device", "remove", "c1", "eth0") == (
        1, "", "Error: Device from profile(s) cannot be removed from individual instance. "
               "Override device or modify profile instead\n")
    assert lx(capsys, "config", "device", "get", "c1", "eth0", "network") == (
        1, "", "Error: Device from profile(s) cannot be retrieved for individual instance\n")
    assert lx(capsys, "config", "device", "override", "c1", "web") == (
        1, "", "Error: The device already exists\n")
    assert lx(capsys, "config", "device", "override", "c1", "nope") == (
        1, "", "Error: The profile device doesn't exist\n")
    assert fake.puts == []  # all refused on the client side, as lxc does


def test_failed_operation_and_etag_mismatch_are_reported(fake, capsys):
    assert lx(capsys, "config", "device", "add", "c1", "failme", "proxy", "listen=tcp::1",
              "connect=tcp::2") == (1, "", 'Error: Failed to start device "failme": boom\n')
    fake.etag = "changed-behind-our-back"  # e.g. another client wrote in between

    # The client re-reads, so a normal write still works with the new ETag...
    assert lx(capsys, "config", "device", "unset", "c1", "web", "connect")[0] == 0
    assert fake.puts[-1][0] == '"changed-behind-our-back"'
    assert "connect" not in fake.instance["devices"]["web"]


def test_etag_mismatch_message(fake, capsys):
    # ...and a change racing between GET and PUT gets LXD's 412 text.
    fake.race_etag = "raced"
    rc, _, err = lx(capsys, "config", "device", "set", "c1", "web", "bind=host")
    assert rc == 1
    assert err.startswith("Error: ETag does not match: e1 vs raced.")
    assert fake.instance["devices"]["web"].get("bind") is None


def test_trust_in_state_dir(capsys, tmp_path):
    cert, _ = generate_self_signed("bob", server=False)
    path = tmp_path / "bob.crt"
    path.write_bytes(cert)
    state = str(tmp_path / "state")
    assert lx(capsys, "config", "trust", "add", str(path), "--state-dir", state)[0] == 0
    (entry,) = TrustStore(state).list()
    assert entry.name == "bob"
    assert entry.fingerprint[:12] in lx(capsys, "config", "trust", "list", "--state-dir",
                                        state)[1]
    assert lx(capsys, "config", "trust", "add", str(path), "--state-dir", state) == (
        1, "", "Error: Certificate already in trust store\n")
    assert lx(capsys, "config", "trust", "add", str(tmp_path), "--state-dir", state) == (
        1, "", "Error: Invalid certificate material\n")
    assert lx(capsys, "config", "trust", "remove", entry.fingerprint, "--state-dir",
              state)[0] == 0
    assert TrustStore(state).list() == []


@pytest.mark.parametrize(("value", "shown"), [
    ("tcp:0.0.0.0:80", "tcp:0.0.0.0:80"),
    ("unix:/run/x.sock", "unix:/run/x.sock"),
    ("true", '"true"'),
    ("0644", '"0644"'),
    ("1000", '"1000"'),
    ("", '""'),
    ("1.5", '"1.5"'),
    ("no", '"no"'),
    ("@abstract", "'@abstract'"),
    ("a: b", "'a: b'"),
    ("it's", "it's"),
    (" lead", "' lead'"),
    ("tcp:[fd42::1]:80", "tcp:[fd42::1]:80"),
    ("80:20", '"80:20"'),  # YAML 1.1 base-60
])
def test_yaml_scalars_like_go_yaml_v2(value, shown):
    assert yaml_scalar(value) == shown


def test_devices_yaml_and_set_arguments():
    assert devices_yaml({}) == "{}\n"
    assert devices_yaml({"b": {"type": "proxy", "nat": "true"}, "a": {"type": "nic"}}) == (
        "a:\n  type: nic\nb:\n  nat: \"true\"\n  type: proxy\n")
    assert parse_set_arguments(["listen", "tcp::1"]) == {"listen": "tcp::1"}
    assert parse_set_arguments(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
