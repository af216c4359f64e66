"""LxdBackend against a real LXD (read-only: it never changes anything on that LXD).

Runs only when LXDPROXY_TEST_LXD_SOCKET points at a real LXD unix socket (or an https URL with a
trusted ~/.config/lxc client certificate) that has at least one instance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
from pylxd import Client

from lxdproxy.config.model import InstanceType
from lxdproxy.errors import ConfigError, NotFoundError, NotSupportedError
from lxdproxy.instances.lxd import ONLY_PROXY_DEVICES, LxdBackend
from lxdproxy.manager.writes import current_state
from lxdproxy.store import Store

ENDPOINT = os.environ.get("LXDPROXY_TEST_LXD_SOCKET")

pytestmark = pytest.mark.skipif(
    not ENDPOINT, reason="set LXDPROXY_TEST_LXD_SOCKET to a real LXD socket to run")


@pytest.fixture
async def backend(tmp_path):
    store = Store(tmp_path / "db")
    b = LxdBackend(ENDPOINT, store, poll_interval=0.2)
    yield b
    await b.close()
    store.close()


@pytest.fixture
async def some_instance(backend) -> str:
    names = await backend.list_names()
    if not names:
        pytest.skip("the real LXD has no instances")
    return names[0]


async def test_record_matches_what_pylxd_sees(backend, some_instance):
    record = await backend.get_record(some_instance)
    raw = await asyncio.to_thread(
        lambda: Client(endpoint=ENDPOINT).api.instances[some_instance].get().json()["metadata"])
    assert record["name"] == raw["name"] == some_instance
    assert record["expanded_devices"] == raw["expanded_devices"]
    assert "state" not in record


async def test_instance_view(backend, some_instance):
    record = await backend.get_record(some_instance)
    state = await backend.get_state(some_instance)
    inst = await backend.get_instance(some_instance)
    assert inst.type is InstanceType(record["type"])
    assert inst.status == state["status"]
    assert (inst.pid or 0) == (state.get("pid") or 0)
    nics = {n for n, d in record["expanded_devices"].items() if d.get("type") == "nic"}
    assert {n.name for n in inst.nics} == nics
    for nic in inst.nics:
        dev = record["expanded_devices"][nic.name]
        assert nic.ipv4_address == (dev.get("ipv4.address") or None)
        assert nic.nictype  # resolved from nictype or the network's type


async def test_unchanged_record_is_accepted_and_changes_refused(backend, some_instance):
    record = await backend.get_record(some_instance)
    unchanged = current_state(record)
    await backend.preview(some_instance, unchanged)  # read-only check, writes nothing
    changed = dataclasses.replace(unchanged, description=unchanged.description + " (changed)")
    with pytest.raises(ConfigError, match=ONLY_PROXY_DEVICES):
        await backend.preview(some_instance, changed)


async def test_missing_and_lifecycle(backend):
    with pytest.raises(NotFoundError):
        await backend.get_record("lxdproxy-test-no-such-instance")
    with pytest.raises(NotSupportedError):
        await backend.delete("anything")


async def test_forward_listen_addresses_and_watch_start(backend):
    addresses = await backend.network_forward_listen_addresses()
    assert isinstance(addresses, tuple)

    async def changed(name: str) -> None:
        pass

    backend.watch(changed)
    await backend._poll_once()  # one real recursion=2 poll parses
