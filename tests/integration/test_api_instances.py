"""The REST shim in-process (aiohttp test client) over a real store and local backend.

Instances that must not realise devices are registered with a PID that then exits (Stopped);
traffic tests run the device runtime against a lab: its host side is ``lab.host``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.traffic import roundtrip as lab_roundtrip
from lxdproxy.daemon import Components, DaemonConfig, build_app, build_components
from lxdproxy.store import Store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rest"
PROXY = {"type": "proxy", "listen": "tcp:198.18.0.1:7000", "connect": "tcp:127.0.0.1:9000"}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
async def make_api(tmp_path: Path, aiohttp_client: Any):
    made: list[Components] = []

    async def make(host_ns: Any = None, poll_interval: float = 0.05) -> Any:
        # The in-process data plane: these tests are about the API and the manager.
        config = DaemonConfig(state_dir=tmp_path, host_netns=host_ns.net if host_ns else None,
                              nft_table="lxdproxytest", local_poll_interval=poll_interval,
                              workers=0)
        components = await build_components(config, Store(tmp_path / f"db{len(made)}"))
        made.append(components)
        return await aiohttp_client(build_app(components))

    yield make
    for components in made:
        await components.close()


@pytest.fixture
async def api(make_api: Any) -> Any:
    return await make_api()


async def register(api: Any, name: str, pid: int, devices: dict | None = None) -> Any:
    body = {"name": name, "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(pid)}, "devices": devices or {}}
    return await api.post("/1.0/instances", json=body)


@pytest.fixture
async def stopped(api: Any) -> str:
    """A registered instance whose process has exited: devices are stored, never started."""
    proc = subprocess.Popen(["sleep", "60"])
    resp = await register(api, "cstop", proc.pid,
                          {"eth0": {"type": "nic", "network": "br0", "ipv4.address": "198.18.0.9"}})
    assert resp.status == 202
    proc.kill()
    proc.wait()
    return "cstop"


async def config_of(api: Any, name: str) -> dict[str, str]:
    """The instance's config as stored (a PUT that keeps it leaves a stopped instance stopped)."""
    return (await (await api.get(f"/1.0/instances/{name}")).json())["metadata"]["config"]


async def get(api: Any, path: str) -> tuple[int, dict[str, Any], Any]:
    resp = await api.get(path)
    return resp.status, await resp.json(), resp.headers


async def test_server_info(api: Any) -> None:
    status, body, headers = await get(api, "/1.0")
    assert status == 200 and headers["Content-Type"] == "application/json"
    meta = body["metadata"]
    captured = fixture("get-1.0.json")["body"]["metadata"]
    assert set(meta) == set(captured)
    assert set(meta["environment"]) >= set(captured["environment"])
    assert {"instances", "etag", "patch", "proxy", "proxy_nat"} <= set(meta["api_extensions"])
    assert "projects" not in meta["api_extensions"]
    assert meta["environment"]["server_clustered"] is False


async def test_not_found_envelopes_match_lxd(api: Any) -> None:
    for path, name in (("/1.0/nope", "get-bad-endpoint.json"),
                       ("/1.0/instances/does-not-exist", "get-instance-missing.json")):
        status, body, headers = await get(api, path)
        cap = fixture(name)
        assert (status, body) == (cap["http_status"], cap["body"])
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, body, _ = await get(api, "/1.0/instances?project=other")
    assert (status, body["error"]) == (404, "Project not found")


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"name": "c1", "source": {"type": "none"}}, 400,
     'Local instances need config "user.lxdproxy.pid" (a process ID) or '
     '"user.lxdproxy.netns" (a network namespace name or path)'),
    ({"name": "c1", "config": {"user.lxdproxy.pid": "abc"}}, 400,
     'Invalid value for config "user.lxdproxy.pid": "abc" is not a process ID'),
    ({"name": "c1", "config": {"user.lxdproxy.pid": "999999999"}}, 400,
     'Invalid value for config "user.lxdproxy.pid": No process with PID 999999999'),
    ({"name": "c1", "config": {"user.lxdproxy.netns": "lxp-missing-ns"}}, 400,
     'Invalid value for config "user.lxdproxy.netns": Network namespace "lxp-missing-ns" '
     'not found'),
    ({"name": "1c", "config": {"user.lxdproxy.pid": "1"}}, 400,
     "Invalid instance name: Name must not start with a number"),
    ({"name": "c1", "source": {"type": "image"}, "config": {"user.lxdproxy.pid": "1"}}, 501,
     'Source type "image" is not supported by the local backend: register an existing '
     'process or netns with source type "none"'),
    ({"name": "c1", "config": {"user.lxdproxy.pid": "1"},
      "devices": {"web": {"type": "proxy", "listen": "tcp:1.2.3.4:80"}}}, 400,
     'Invalid devices: Device validation failed for "web": Invalid value for device option '
     '"connect": Unknown protocol type ""'),
])
async def test_register_errors(api: Any, body: dict, status: int, message: str) -> None:
    resp = await api.post("/1.0/instances", json=body)
    got = await resp.json()
    assert (resp.status, got["error"]) == (status, message)
    assert (await get(api, "/1.0/instances"))[1]["metadata"] == []


async def test_register_duplicate_is_409(api: Any, stopped: str) -> None:
    resp = await register(api, stopped, 1)
    assert (resp.status, (await resp.json())["error"]) == (409, 'Instance "cstop" already exists')


async def test_operations_are_final_readable_and_waitable(api: Any, stopped: str) -> None:
    resp = await api.put(f"/1.0/instances/{stopped}", json={
        "config": await config_of(api, stopped), "devices": {"web": PROXY}})
    body = await resp.json()
    assert resp.status == 202 and resp.headers["Location"] == body["operation"]
    assert body["metadata"]["status"] == "Success"
    op_id = body["metadata"]["id"]
    for path in (f"/1.0/operations/{op_id}", f"/1.0/operations/{op_id}/wait?timeout=5"):
        status, got, _ = await get(api, path)
        assert status == 200 and got["metadata"]["id"] == op_id
        assert got["metadata"]["resources"]["instances"] == [f"/1.0/instances/{stopped}"]
    assert body["operation"] in (await get(api, "/1.0/operations"))[1]["metadata"]["success"]
    status, got, _ = await get(api, "/1.0/operations/nope")
    assert (status, got["error"]) == (404, "Operation not found")


async def test_put_replaces_devices_and_honours_if_match(api: Any, stopped: str) -> None:
    status, before, headers = await get(api, f"/1.0/instances/{stopped}")
    etag = headers["ETag"]
    rec = before["metadata"]
    assert rec["status"] == "Stopped" and etag.startswith('"')
    bad = await api.put(f"/1.0/instances/{stopped}", json={**rec, "devices": {}},
                        headers={"If-Match": '"0000"'})
    err = await bad.json()
    assert bad.status == 412
    assert err["error"].startswith(f"ETag does not match: {etag.strip(chr(34))} vs 0000.")
    assert (await get(api, f"/1.0/instances/{stopped}"))[2]["ETag"] == etag
    # pylxd-style full body with read-only fields: they are ignored
    body = {**rec, "devices": {"web": PROXY}, "expanded_devices": {"junk": {"type": "disk"}},
            "name": "renamed", "status": "Running"}
    ok = await api.put(f"/1.0/instances/{stopped}", json=body, headers={"If-Match": etag})
    assert ok.status == 202
    status, after, headers = await get(api, f"/1.0/instances/{stopped}")
    assert after["metadata"]["devices"] == {"web": PROXY}  # eth0 gone: full replacement
    assert after["metadata"]["expanded_devices"] == {"web": PROXY}
    assert after["metadata"]["name"] == stopped and headers["ETag"] != etag


async def test_twenty_racing_if_match_writers_one_wins(api: Any, stopped: str) -> None:
    """Every writer read the same ETag: the write lock checks it inside, so exactly one wins."""
    _status, before, headers = await get(api, f"/1.0/instances/{stopped}")
    rec, etag = before["metadata"], headers["ETag"]

    async def write(i: int) -> int:
        body = {**rec, "config": {**rec["config"], "user.writer": str(i)}}
        resp = await api.put(f"/1.0/instances/{stopped}", json=body, headers={"If-Match": etag})
        return resp.status

    statuses = await asyncio.gather(*(write(i) for i in range(20)))
    assert sorted(statuses) == [202] + [412] * 19
    after = (await get(api, f"/1.0/instances/{stopped}"))[1]["metadata"]
    assert "user.writer" in after["config"]


async def test_patch_merges_and_deletes(api: Any, stopped: str) -> None:
    resp = await api.patch(f"/1.0/instances/{stopped}", json={"devices": {"web": PROXY},
                                                              "config": {"user.note": "x"}})
    assert (resp.status, await resp.json()) == (200, fixture("patch-add-proxy-c1.json")["body"])
    rec = (await get(api, f"/1.0/instances/{stopped}"))[1]["metadata"]
    assert set(rec["devices"]) == {"eth0", "web"} and rec["config"]["user.note"] == "x"
    await api.patch(f"/1.0/instances/{stopped}", json={"devices": {"eth0": None}})
    rec = (await get(api, f"/1.0/instances/{stopped}"))[1]["metadata"]
    assert set(rec["devices"]) == {"web"}


async def test_empty_values_are_dropped_on_every_write(api: Any, stopped: str) -> None:
    # LXD stores no key whose value is "" (what `lxc config device unset` sends).
    with_bind = {**PROXY, "bind": "host", "description": ""}
    await api.patch(f"/1.0/instances/{stopped}", json={"devices": {"web": with_bind},
                                                      "config": {"user.note": ""}})
    rec = (await get(api, f"/1.0/instances/{stopped}"))[1]["metadata"]
    assert rec["devices"]["web"] == {**PROXY, "bind": "host"}
    assert "user.note" not in rec["config"]
    rec["devices"]["web"]["bind"] = ""
    await api.put(f"/1.0/instances/{stopped}", json={"config": rec["config"],
                                                    "devices": rec["devices"]})
    rec = (await get(api, f"/1.0/instances/{stopped}"))[1]["metadata"]
    assert rec["devices"]["web"] == PROXY
    proc = subprocess.Popen(["sleep", "60"])
    try:
        resp = await register(api, "c2", proc.pid, {"eth0": {"type": "nic", "network": "br0",
                                                             "ipv4.address": ""}})
        assert resp.status == 202
        rec = (await get(api, "/1.0/instances/c2"))[1]["metadata"]
        assert rec["devices"]["eth0"] == {"type": "nic", "network": "br0"}
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("method", "body", "message"), [
    ("PATCH", {"devices": {"web": {**PROXY, "connect": "tcp:localhost:80"}}},
     'Invalid devices: Device validation failed for "web": Invalid value for device option '
     '"connect": Not an IP address "localhost"'),
    ("PATCH", {"devices": {"web": {**PROXY, "nat": True}}},
     "json: cannot unmarshal bool into Go struct field InstancePut.devices of type string"),
    ("PUT", {"config": {"user.lxdproxy.pid": "1"}, "devices": {"x": {"path": "/"}}},
     'Invalid devices: Device validation failed for "x": Failed loading device "x": '
     'Missing device type in config'),
    ("PUT", {"config": {}, "devices": {}},
     'Local instances need config "user.lxdproxy.pid" (a process ID) or '
     '"user.lxdproxy.netns" (a network namespace name or path)'),
    ("PATCH", "{not json", "invalid character 'n' looking for beginning of object key string"),
])
async def test_rejected_write_changes_nothing(api: Any, stopped: str, method: str, body: Any,
                                              message: str) -> None:
    _, before, before_headers = await get(api, f"/1.0/instances/{stopped}")
    data = body if isinstance(body, str) else json.dumps(body)
    resp = await api.request(method, f"/1.0/instances/{stopped}", data=data)
    got = await resp.json()
    # LXD 5.0.2 answers validation failures with 500; we answer 400 (the caller's fault).
    assert (resp.status, got["type"], got["error"]) == (400, "error", message)
    _, after, after_headers = await get(api, f"/1.0/instances/{stopped}")
    assert after == before and after_headers["ETag"] == before_headers["ETag"]


async def test_recursion_and_filters(api: Any, stopped: str) -> None:
    assert (await get(api, "/1.0/instances"))[1]["metadata"] == [f"/1.0/instances/{stopped}"]
    full = (await get(api, "/1.0/instances?recursion=1"))[1]["metadata"]
    captured = fixture("get-instance-c1.json")["body"]["metadata"]
    assert list(full[0]) == list(captured)
    deep = (await get(api, "/1.0/instances?recursion=2"))[1]["metadata"][0]
    assert deep["state"]["status"] == "Stopped" and deep["state"]["pid"] == 0
    assert deep["snapshots"] == [] and deep["backups"] == []
    one = (await get(api, f"/1.0/instances/{stopped}?recursion=1"))[1]["metadata"]
    assert "state" in one
    assert (await get(api, "/1.0/instances?instance-type=virtual-machine"))[1]["metadata"] == []


async def test_lifecycle_calls_outside_our_reach_are_clear_errors(api: Any, stopped: str) -> None:
    resp = await api.put(f"/1.0/instances/{stopped}/state", json={"action": "stop"})
    assert (resp.status, (await resp.json())["error"]) == (400, "The instance is already stopped")
    resp = await api.put(f"/1.0/instances/{stopped}/state", json={"action": "freeze"})
    assert resp.status == 501 and "not supported" in (await resp.json())["error"]
    resp = await api.put(f"/1.0/instances/{stopped}/state", json={"action": "start"})
    assert resp.status == 400 and "is gone" in (await resp.json())["error"]
    resp = await api.post(f"/1.0/instances/{stopped}", json={"name": "x"})
    assert resp.status == 501
    resp = await api.put("/1.0/profiles/default", json={})
    assert resp.status == 501


async def test_default_profile(api: Any, stopped: str) -> None:
    assert (await get(api, "/1.0/profiles"))[1]["metadata"] == ["/1.0/profiles/default"]
    status, body, headers = await get(api, "/1.0/profiles/default")
    assert status == 200 and body["metadata"]["devices"] == {} and "ETag" in headers
    assert body["metadata"]["used_by"] == [f"/1.0/instances/{stopped}"]
    assert (await get(api, "/1.0/profiles/x"))[0] == 404


async def test_delete(api: Any, stopped: str) -> None:
    resp = await api.delete(f"/1.0/instances/{stopped}")
    assert resp.status == 202 and (await resp.json())["metadata"]["status"] == "Success"
    assert (await get(api, f"/1.0/instances/{stopped}"))[0] == 404


# -- with traffic: the runtime's host side is lab.host --------------------------------------

def roundtrip(lab: Any, port: int, payload: bytes = b"ping") -> bytes:
    return lab_roundtrip(lab.host, "198.18.0.1", port, payload)


@pytest.mark.lab
async def test_devices_follow_writes_and_failures_roll_back(lab: Any, make_api: Any) -> None:
    api = await make_api(host_ns=lab.host.namespaces)
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    assert (await register(api, "c1", inst.pid, {"web": PROXY})).status == 202
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"

    # a port already taken in lab.host: the new device cannot start
    blocker = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("198.18.0.1", 7001))
    blocker.listen()
    _, before, h_before = await get(api, "/1.0/instances/c1")
    busy = {**PROXY, "listen": "tcp:198.18.0.1:7001"}
    resp = await api.patch("/1.0/instances/c1", json={"devices": {"web2": busy}})
    err = await resp.json()
    assert resp.status == 400 and err["error"].startswith('Failed to start device "web2": ')
    # PUT that moves "web" onto the busy port: Failure operation, old "web" restored
    resp = await api.put("/1.0/instances/c1", json={**before["metadata"],
                                                    "devices": {"web": busy}})
    body = await resp.json()
    assert resp.status == 202 and body["metadata"]["status"] == "Failure"
    assert body["metadata"]["err"].startswith('Failed to start device "web": ')
    _, after, h_after = await get(api, "/1.0/instances/c1")
    assert after == before and h_after["ETag"] == h_before["ETag"]
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    blocker.close()

    # removal stops the listener
    await api.patch("/1.0/instances/c1", json={"devices": {"web": None}})
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(roundtrip, lab, 7000)


@pytest.mark.lab
async def test_devices_follow_a_restarted_instance(lab: Any, make_api: Any) -> None:
    api = await make_api(host_ns=lab.host.namespaces)
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    assert (await register(api, "c1", inst.pid, {"web": PROXY})).status == 202
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    old_pid = inst.pid
    inst.restart()
    for _ in range(100):
        state = (await get(api, "/1.0/instances/c1/state"))[1]["metadata"]
        if state["status"] == "Stopped":
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "Stopped" and state["pid"] == 0
    # re-point the instance at its new init PID: the device is re-created there
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    resp = await api.patch("/1.0/instances/c1",
                           json={"config": {"user.lxdproxy.pid": str(inst.pid)}})
    assert resp.status == 200 and inst.pid != old_pid
    for _ in range(100):
        try:
            if await asyncio.to_thread(roundtrip, lab, 7000) == b"ping":
                break
        except OSError:
            await asyncio.sleep(0.05)
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    state = (await get(api, "/1.0/instances/c1/state"))[1]["metadata"]
    assert state["pid"] == inst.pid
    assert inst.ipv4 in [a["address"] for nic in state["network"].values()
                         for a in nic["addresses"]]


@pytest.mark.lab
async def test_instance_registered_by_netns_name(lab: Any, make_api: Any) -> None:
    api = await make_api(host_ns=lab.host.namespaces)
    peer = lab.add_client()
    lab.echo(peer, "tcp", "127.0.0.1", 9000)
    resp = await api.post("/1.0/instances", json={
        "name": "n1", "source": {"type": "none"},
        "config": {"user.lxdproxy.netns": peer.name}, "devices": {"web": PROXY}})
    assert resp.status == 202 and (await resp.json())["metadata"]["status"] == "Success"
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    state = (await get(api, "/1.0/instances/n1/state"))[1]["metadata"]
    assert state["status"] == "Running" and state["pid"] == 0
    assert peer.ipv4 in [a["address"] for nic in state["network"].values()
                         for a in nic["addresses"]]


@pytest.mark.lab
async def test_instance_exit_stops_devices_at_once(lab: Any, make_api: Any) -> None:
    """The init process exiting is seen through its pidfd, not the (here: hour-long) poll."""
    api = await make_api(host_ns=lab.host.namespaces, poll_interval=3600)
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    assert (await register(api, "c1", inst.pid, {"web": PROXY})).status == 202
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    inst.restart()  # the old init exits
    for _ in range(100):
        try:
            await asyncio.to_thread(roundtrip, lab, 7000)
        except ConnectionRefusedError:
            break
        except OSError:
            pass
        await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(roundtrip, lab, 7000)


async def test_events_websocket_sends_operation_and_lifecycle(api: Any, stopped: str) -> None:
    async with api.ws_connect("/1.0/events?type=operation,lifecycle") as ws:
        resp = await api.put(f"/1.0/instances/{stopped}", json={
            "config": await config_of(api, stopped), "devices": {"web": PROXY}})
        op = (await resp.json())["metadata"]
        first = await ws.receive_json(timeout=5)
        second = await ws.receive_json(timeout=5)
    assert (first["type"], first["metadata"]["id"]) == ("operation", op["id"])
    assert first["metadata"]["status"] == "Success" and first["project"] == "default"
    assert second["type"] == "lifecycle"
    assert second["metadata"]["action"] == "instance-updated"
    assert second["metadata"]["source"] == f"/1.0/instances/{stopped}"
    resp = await api.get("/1.0/events?type=bogus")
    assert resp.status == 400


@pytest.mark.lab
async def test_state_stop_start_switch_devices_not_the_process(lab: Any, make_api: Any) -> None:
    api = await make_api(host_ns=lab.host.namespaces)
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    assert (await register(api, "c1", inst.pid, {"web": PROXY})).status == 202

    async def state(action: str) -> dict[str, Any]:
        resp = await api.put("/1.0/instances/c1/state", json={"action": action, "force": True})
        assert resp.status == 202, await resp.text()
        return (await resp.json())["metadata"]

    assert (await state("stop"))["status"] == "Success"
    rec = (await get(api, "/1.0/instances/c1/state"))[1]["metadata"]
    assert (rec["status"], rec["pid"]) == ("Stopped", 0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(roundtrip, lab, 7000)
    assert inst.run(["true"]).returncode == 0  # the process was not touched
    assert (await state("start"))["status"] == "Success"
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
    resp = await api.put("/1.0/instances/c1/state", json={"action": "start"})
    assert (resp.status, (await resp.json())["error"]) == (400, "The instance is already running")
    assert (await state("restart"))["status"] == "Success"
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"

    # a device that cannot start fails the start, and the instance stays stopped
    await state("stop")
    blocker = lab.host.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("198.18.0.1", 7000))
    blocker.listen()
    op = await state("start")
    assert op["status"] == "Failure" and op["err"].startswith('Failed to start device "web": ')
    assert (await get(api, "/1.0/instances/c1"))[1]["metadata"]["status"] == "Stopped"
    blocker.close()
    assert (await state("start"))["status"] == "Success"
    assert await asyncio.to_thread(roundtrip, lab, 7000) == b"ping"
