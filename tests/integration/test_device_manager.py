"""The device manager without HTTP: writes are validated, applied once, persisted, and rolled
back as a whole on failure; a PID set by a write moves the devices; removal."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab.forwarding import roundtrip
from lxdproxy.daemon import Components, DaemonConfig, build_components
from lxdproxy.errors import ConfigError, DeviceStartError
from lxdproxy.instances.model import InstanceUpdate
from lxdproxy.manager.writes import InstancePatch
from lxdproxy.store import Store

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


def proxy(port: int, target: int) -> dict[str, str]:
    return {"type": "proxy", "listen": f"tcp:{HOST}:{port}", "connect": f"tcp:127.0.0.1:{target}"}


@pytest.fixture
async def components(lab: Lab, tmp_path: Path) -> AsyncIterator[Components]:
    config = DaemonConfig(state_dir=tmp_path, host_netns=lab.host.namespaces.net,
                          nft_table="lxdproxytest", workers=0)
    built = await build_components(config, Store(tmp_path / "db"))
    yield built
    await built.close()


async def test_write_apply_persist_and_rollback(
        lab: Lab, components: Components, caplog: pytest.LogCaptureFixture) -> None:
    manager = components.manager
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000, 9001, tag=True)
    await manager.create({"name": "c1", "source": {"type": "none"},
                          "config": {"user.lxdproxy.pid": str(inst.pid)},
                          "devices": {"web": proxy(7000, 9000)}})
    assert await roundtrip(lab.host, (HOST, 7000), b"a") == b"9000:a"

    with caplog.at_level(logging.INFO, logger="lxdproxy.manager.runtime"):
        await manager.patch("c1", InstancePatch(config={}, devices={"web": proxy(7000, 9001)}))
        await manager.reconcile()  # what an echo of our own write would amount to
    starts = [r for r in caplog.records if r.getMessage() == "started device c1/web"]
    assert len(starts) == 1  # applied once; the stored state already matches what runs
    assert await roundtrip(lab.host, (HOST, 7000), b"b") == b"9001:b"

    # A write whose second device cannot start changes nothing: the first keeps forwarding
    # the old way, and the store still holds the old devices.
    blocker = lab.host.socket()
    blocker.bind((HOST, 7001))
    blocker.listen(1)
    before = (await manager.record("c1"))["devices"]
    with pytest.raises(DeviceStartError, match='^Failed to start device "more": '):
        await manager.put("c1", InstanceUpdate(
            config={"user.lxdproxy.pid": str(inst.pid)},
            devices={"web": proxy(7000, 9000), "more": proxy(7001, 9000)}))
    blocker.close()
    assert (await manager.record("c1"))["devices"] == before
    assert await roundtrip(lab.host, (HOST, 7000), b"c") == b"9001:c"

    with pytest.raises(ConfigError, match="Not an IP address"):
        await manager.patch("c1", InstancePatch(config={}, devices={
            "web": {**proxy(7000, 9000), "connect": "tcp:localhost:9000"}}))
    assert (await manager.record("c1"))["devices"] == before

    await manager.patch("c1", InstancePatch(config={}, devices={"web": None}))
    with pytest.raises(ConnectionRefusedError):
        await roundtrip(lab.host, (HOST, 7000), b"d")


async def test_reconcile_follows_a_new_pid_set_by_a_write(lab: Lab, components: Components) -> None:
    manager = components.manager
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    await manager.create({"name": "c1", "source": {"type": "none"},
                          "config": {"user.lxdproxy.pid": str(inst.pid)},
                          "devices": {"web": proxy(7002, 9000)}})
    assert await roundtrip(lab.host, (HOST, 7002), b"x") == b"x"
    inst.restart()  # the old init exits; a new one with new namespaces
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    record: dict[str, Any] = await manager.record("c1")
    await manager.patch("c1", InstancePatch(
        config={**record["config"], "user.lxdproxy.pid": str(inst.pid)}, devices={}))
    assert await roundtrip(lab.host, (HOST, 7002), b"y") == b"y"
