"""The real ``lxc`` 5.0.2 ``warning`` commands, and pylxd's view of a failed device, against the
real daemon. The warnings are raised through a second connection to the daemon's store (another
process writing the same SQLite file, as the device manager's registry does inside the daemon),
so this tests the API and the clients, not what raises them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylxd
import pytest

from lab.daemon import RunningDaemon
from lxdproxy.store import Store
from lxdproxy.warning_registry import WarningRegistry

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

MESSAGE = ('Failed to start device "web": Error occurred when starting proxy device: Error: '
           'Failed to listen on 198.18.0.1:7400: listen tcp 198.18.0.1:7400: bind: address '
           'already in use')


@pytest.fixture
def daemon(running_daemon: RunningDaemon) -> RunningDaemon:
    return running_daemon


@pytest.fixture
def registry(daemon: RunningDaemon) -> Iterator[WarningRegistry]:
    store = Store(daemon.state_dir / "lxdproxy.db")
    yield WarningRegistry(store)
    store.close()


def lxc(daemon: RunningDaemon, tmp_path: Path, *args: str,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["lxc", *args], env=daemon.env(tmp_path / "lxc-conf"),
                          capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def csv_rows(daemon: RunningDaemon, tmp_path: Path, *flags: str) -> list[list[str]]:
    out = lxc(daemon, tmp_path, "warning", "list", "--format", "csv", "-c", "utSscp", *flags)
    return [line.split(",") for line in out.stdout.splitlines()]


def test_lxc_warning_list_show_ack_delete(daemon: RunningDaemon, registry: WarningRegistry,
                                          tmp_path: Path) -> None:
    assert lxc(daemon, tmp_path, "warning", "list", "--format", "csv").stdout == ""
    w = registry.raise_device_failure("default", "c1", "web", "first try")
    registry.raise_device_failure("default", "c1", "web", MESSAGE)

    assert csv_rows(daemon, tmp_path) == [
        [w.uuid, "Proxy device failed to start", "NEW", "MODERATE", "2", "default"]]
    table = lxc(daemon, tmp_path, "warning", "list").stdout
    assert "Proxy device failed to start" in table and "| NEW " in table

    shown = lxc(daemon, tmp_path, "warning", "show", w.uuid).stdout
    assert f"uuid: {w.uuid}\n" in shown
    assert "status: new\n" in shown and "count: 2\n" in shown
    assert "entity_url: /1.0/instances/c1?project=default&device=web\n" in shown
    assert "last_message: 'Failed to start device \"web\"" in shown

    # Acknowledged and resolved warnings are hidden unless --all, as with LXD.
    lxc(daemon, tmp_path, "warning", "ack", w.uuid)
    assert csv_rows(daemon, tmp_path) == []
    assert csv_rows(daemon, tmp_path, "--all")[0][2] == "ACKNOWLEDGED"
    registry.resolve_device("default", "c1", "web")
    assert csv_rows(daemon, tmp_path, "--all")[0][2] == "RESOLVED"

    lxc(daemon, tmp_path, "warning", "delete", w.uuid)
    assert csv_rows(daemon, tmp_path, "--all") == []
    gone = lxc(daemon, tmp_path, "warning", "show", w.uuid, ok=False)
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: Warning not found"


def test_rest_shapes_and_refusals(daemon: RunningDaemon, registry: WarningRegistry) -> None:
    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        argv = ["curl", "-sS", "--unix-socket", str(daemon.socket), "-X", method]
        if body is not None:
            argv += ["-d", body if isinstance(body, str) else json.dumps(body)]
        return json.loads(subprocess.run(argv + [f"http://lxd{path}"], capture_output=True,
                                         text=True, check=True).stdout)

    assert call("GET", "/1.0/warnings")["metadata"] is None  # Go's nil slice
    w = registry.raise_device_failure("default", "c1", "web", "m")
    assert call("GET", "/1.0/warnings")["metadata"] == [f"/1.0/warnings/{w.uuid}"]
    listed = call("GET", "/1.0/warnings?recursion=1")["metadata"]
    assert list(listed[0]) == ["status", "uuid", "location", "project", "type", "count",
                               "first_seen_at", "last_seen_at", "last_message", "severity",
                               "entity_url"]
    assert call("GET", "/1.0/warnings?project=other")["error_code"] == 404  # no such project
    bad = call("PUT", f"/1.0/warnings/{w.uuid}", {"status": "resolved"})
    assert (bad["error_code"], bad["error"]) == (403, 'Status may only be set to "acknowledge" '
                                                      'or "new"')
    bad = call("PUT", f"/1.0/warnings/{w.uuid}", {"status": 1})
    assert bad["error"] == ("json: cannot unmarshal number into Go struct field "
                            "WarningPut.status of type string")
    assert call("PUT", f"/1.0/warnings/{w.uuid}", "{")["error"] == "unexpected end of JSON input"
    assert call("GET", f"/1.0/warnings/{w.uuid}")["metadata"]["status"] == "new"  # unchanged
    assert call("PATCH", f"/1.0/warnings/{w.uuid}", {"status": "acknowledged"})["error"] == ""
    assert call("GET", f"/1.0/warnings/{w.uuid}")["metadata"]["status"] == "acknowledged"


def test_pylxd_sees_the_failed_device_in_the_instance_state(
        lab: Any, daemon: RunningDaemon, registry: WarningRegistry) -> None:
    inst = lab.add_instance()
    client = pylxd.Client(endpoint=str(daemon.socket))
    client.instances.create({"name": "c1", "source": {"type": "none"},
                             "config": {"user.lxdproxy.pid": str(inst.pid)}}, wait=True)
    c1 = client.instances.get("c1")
    assert c1.state().failed_devices == {}
    registry.raise_device_failure("default", "c1", "web", MESSAGE)
    assert c1.state().failed_devices == {"web": MESSAGE}
    full = client.api.instances["c1"].get(params={"recursion": "1"}).json()["metadata"]
    assert full["state"]["failed_devices"] == {"web": MESSAGE}
    registry.resolve_device("default", "c1", "web")
    assert c1.state().failed_devices == {}
