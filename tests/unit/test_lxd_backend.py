"""LxdBackend against LXD's real HTTP shapes (captured from LXD 5.0.2), mocked with `responses`.

The mock sits at the process boundary we don't own (LXD's REST API); pylxd and our backend run
for real. pylxd talks plain http to ``http://lxd.test`` the same way it talks to the socket.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from lxdproxy.config.model import InstanceType
from lxdproxy.errors import ConfigError, LxdError, NotFoundError, NotSupportedError
from lxdproxy.instances.lxd import ONLY_PROXY_DEVICES, LxdBackend
from lxdproxy.instances.model import InstanceUpdate, Nic
from lxdproxy.store import Store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rest"
LXD = "http://lxd.test"


def capture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def body(name: str) -> dict[str, Any]:
    return capture(name)["body"]


def sync(metadata: Any) -> dict[str, Any]:
    return {"type": "sync", "status": "Success", "status_code": 200, "operation": "",
            "error_code": 0, "error": "", "metadata": metadata}


C1 = body("get-instance-c1.json")["metadata"]
C1_STATE = body("get-instance-c1-state.json")["metadata"]


@pytest.fixture
def lxd() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{LXD}/1.0", json=body("get-1.0.json"))
        yield mock


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "db")
    yield s
    s.close()


@pytest.fixture
async def backend(store: Store) -> Any:
    b = LxdBackend(LXD, store, poll_interval=0.01)
    yield b
    await b.close()


async def test_get_record_is_lxds_exact_object(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances/c1", json=body("get-instance-c1.json"))
    assert await backend.get_record("c1") == C1


async def test_missing_instance_is_not_found_with_lxds_message(lxd, backend):
    capt = capture("get-instance-missing.json")
    lxd.get(f"{LXD}/1.0/instances/nope", json=capt["body"], status=capt["http_status"])
    with pytest.raises(NotFoundError) as err:
        await backend.get_record("nope")
    assert str(err.value) == "Instance not found"
    assert err.value.status == 404


async def test_instance_name_cannot_escape_the_path(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances/a%2Fb%3Fx", json=capt_missing(), status=404)
    with pytest.raises(NotFoundError):
        await backend.get_record("a/b?x")


def capt_missing() -> dict[str, Any]:
    return body("get-instance-missing.json")


async def test_get_instance_resolves_nic_from_network_and_volatile(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances/c1", json=body("get-instance-c1.json"))
    lxd.get(f"{LXD}/1.0/instances/c1/state", json=body("get-instance-c1-state.json"))
    net = lxd.get(f"{LXD}/1.0/networks/lxdbr0", json=body("get-network-lxdbr0.json"))
    inst = await backend.get_instance("c1")
    assert inst.name == "c1"
    assert inst.type is InstanceType.CONTAINER
    assert inst.status == "Running" and inst.running
    assert inst.pid == 8981
    assert inst.netns is None
    assert inst.nics == (Nic(name="eth0", nictype="bridged", ipv4_address="10.123.0.10",
                             ipv6_address=None, host_name="vethe61c592e", interface="eth0"),)
    # The network type is cached: a second lookup does not ask LXD again.
    await backend.get_instance("c1")
    assert net.call_count == 1


async def test_nic_from_profile_only_and_nictype_key_and_vm(lxd, backend):
    record = copy.deepcopy(C1)
    record["name"] = "vm1"
    record["type"] = "virtual-machine"
    record["devices"] = {}  # static IPs set in a profile exist only in expanded_devices
    record["expanded_devices"] = {
        "eth0": {"type": "nic", "nictype": "macvlan", "parent": "eno1",
                 "ipv6.address": "fd42::10"},
        "root": {"type": "disk", "path": "/", "pool": "default"},
    }
    record["expanded_config"] = {}
    state = dict(C1_STATE, pid=4242, processes=-1)
    lxd.get(f"{LXD}/1.0/instances/vm1", json=sync(record))
    lxd.get(f"{LXD}/1.0/instances/vm1/state", json=sync(state))
    inst = await backend.get_instance("vm1")
    assert inst.type is InstanceType.VM
    assert inst.pid == 4242  # QEMU's pid for a VM
    assert inst.nics == (Nic(name="eth0", nictype="macvlan", ipv6_address="fd42::10"),)


async def test_stopped_instance_has_no_pid(lxd, backend):
    record = dict(C1, status="Stopped", status_code=102)
    state = dict(C1_STATE, status="Stopped", status_code=102, pid=0, network=None)
    lxd.get(f"{LXD}/1.0/instances/c1", json=sync(record))
    lxd.get(f"{LXD}/1.0/instances/c1/state", json=sync(state))
    lxd.get(f"{LXD}/1.0/networks/lxdbr0", json=body("get-network-lxdbr0.json"))
    inst = await backend.get_instance("c1")
    assert inst.pid is None
    assert inst.status == "Stopped" and not inst.running


async def test_get_state_passes_lxds_state_through(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances/c1/state", json=body("get-instance-c1-state.json"))
    assert await backend.get_state("c1") == C1_STATE


async def test_list_names(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances", json=sync(["/1.0/instances/c1",
                                                "/1.0/instances/web?project=other"]))
    assert await backend.list_names() == ["c1", "web"]


async def test_lifecycle_is_not_supported(lxd, backend):
    with pytest.raises(NotSupportedError, match="Creating instances is not supported"):
        await backend.create({"name": "x", "source": {"type": "none"}})
    with pytest.raises(NotSupportedError, match="Deleting instances is not supported"):
        await backend.delete("c1")


def _update(record: dict[str, Any]) -> InstanceUpdate:
    return InstanceUpdate(config=record["config"], devices=record["devices"],
                          description=record.get("description", ""))


async def test_preview_accepts_unchanged_and_proxy_only_changes(lxd, backend):
    lxd.get(f"{LXD}/1.0/instances/c1", json=body("get-instance-c1.json"))
    lxd.get(f"{LXD}/1.0/instances/c1/state", json=body("get-instance-c1-state.json"))
    lxd.get(f"{LXD}/1.0/networks/lxdbr0", json=body("get-network-lxdbr0.json"))
    # What pylxd's save() sends back: everything, plus a new proxy device.
    record = copy.deepcopy(C1)
    record["devices"]["web"] = {"type": "proxy", "listen": "tcp:0.0.0.0:80",
                                "connect": "tcp:127.0.0.1:80"}
    inst = await backend.preview("c1", _update(record))
    assert inst.name == "c1" and inst.running
    await backend.preview("c1", _update(C1))


@pytest.mark.parametrize("change", [
    lambda r: r["config"].__setitem__("limits.cpu", "2"),
    lambda r: r["devices"]["eth0"].__setitem__("ipv4.address", "10.123.0.11"),
    lambda r: r["devices"].pop("hostusr"),
    lambda r: r.__setitem__("description", "changed"),
])
async def test_preview_rejects_non_proxy_changes(lxd, backend, change):
    lxd.get(f"{LXD}/1.0/instances/c1", json=body("get-instance-c1.json"))
    record = copy.deepcopy(C1)
    change(record)
    with pytest.raises(ConfigError) as err:
        await backend.preview("c1", _update(record))
    assert str(err.value) == ONLY_PROXY_DEVICES
    assert err.value.status == 400


def _recursion2(pid: int, status: str = "Running") -> dict[str, Any]:
    entry = copy.deepcopy(C1)
    entry["status"] = status
    entry["state"] = dict(C1_STATE, pid=pid, status=status)
    other = copy.deepcopy(entry)
    other["name"] = "steady"
    other["status"] = "Running"
    other["state"] = dict(C1_STATE, pid=7)
    return sync([entry, other])


async def test_watch_reports_restart_and_status_change(lxd, backend):
    polls: list[dict[str, Any]] = [_recursion2(8981), _recursion2(8981), _recursion2(9100),
                                   _recursion2(0, "Stopped")]

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        current = polls.pop(0) if len(polls) > 1 else polls[0]
        return 200, {}, json.dumps(current)

    lxd.add_callback("GET", f"{LXD}/1.0/instances", callback=reply,
                     match=[matchers.query_param_matcher({"recursion": "2"})])
    seen: list[str] = []
    done = asyncio.Event()

    async def changed(name: str) -> None:
        seen.append(name)
        if len(seen) == 2:
            done.set()

    backend.watch(changed)
    await asyncio.wait_for(done.wait(), 10)
    # The restart (new pid) and the stop, each once; the unchanged instance never.
    assert seen == ["c1", "c1"]


async def test_watch_survives_lxd_errors_and_handler_errors(lxd, backend):
    replies: list[tuple[int, Any]] = [(500, {"type": "error", "error": "boom", "error_code": 500,
                                             "status": "", "status_code": 0, "operation": "",
                                             "metadata": None}),
                                      (200, _recursion2(1)), (200, _recursion2(2)),
                                      (200, _recursion2(3))]

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        status, data = replies.pop(0) if len(replies) > 1 else replies[0]
        return status, {}, json.dumps(data)

    lxd.add_callback("GET", f"{LXD}/1.0/instances", callback=reply)
    calls: list[str] = []
    done = asyncio.Event()

    async def changed(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("handler bug")  # must not kill the watcher
        done.set()

    backend.watch(changed)
    await asyncio.wait_for(done.wait(), 10)
    assert calls == ["c1", "c1"]


async def test_network_forward_listen_addresses(lxd, backend):
    lxdbr0 = body("get-network-lxdbr0.json")["metadata"]
    eno1 = {"name": "eno1", "type": "physical", "managed": False, "config": {}}
    lxd.get(f"{LXD}/1.0/networks", json=sync([lxdbr0, eno1]),
            match=[matchers.query_param_matcher({"recursion": "1"})])
    lxd.get(f"{LXD}/1.0/networks/lxdbr0/forwards", json=sync([
        {"listen_address": "198.18.5.1", "description": "", "config": {}, "ports": [],
         "location": "none"},
        {"listen_address": "fd42::5", "description": "", "config": {}, "ports": [],
         "location": "none"},
    ]), match=[matchers.query_param_matcher({"recursion": "1"})])
    assert await backend.network_forward_listen_addresses() == ("198.18.5.1", "fd42::5")


async def test_missing_socket_is_a_clear_error(tmp_path, store):
    backend = LxdBackend(str(tmp_path / "no.socket"), store)
    with pytest.raises(LxdError, match=r"LXD socket .*no\.socket does not exist"):
        await backend.get_record("c1")
    await backend.close()


async def test_unreachable_lxd_is_a_clear_error(store):
    with responses.RequestsMock() as mock:
        mock.get(f"{LXD}/1.0", body=requests.ConnectionError("refused"))
        backend = LxdBackend(LXD, store)
        with pytest.raises(LxdError, match="Failed to connect to LXD at http://lxd.test"):
            await backend.list_names()
        await backend.close()
