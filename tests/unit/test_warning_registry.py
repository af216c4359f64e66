"""WarningRegistry over a real store: LXD 5.0.2's upsert/resolve rules and API checks."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import pytest

from lxdproxy.errors import LxdError, NotFoundError
from lxdproxy.store import Store
from lxdproxy.warning_registry import (
    WarningRegistry,
    WarningType,
    device_entity_url,
    parse_device_entity_url,
    warning_json,
)

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=datetime.UTC)


@pytest.fixture
def clock() -> list[datetime.datetime]:
    return [T0]


@pytest.fixture
def registry(tmp_path: Path, clock: list[datetime.datetime]) -> WarningRegistry:
    return WarningRegistry(Store(tmp_path / "db"), clock=lambda: clock[0])


def test_raise_counts_and_keeps_first_seen(registry: WarningRegistry,
                                           clock: list[datetime.datetime]) -> None:
    first = registry.raise_device_failure("default", "c1", "web", "port taken")
    clock[0] = T0 + datetime.timedelta(seconds=10)
    again = registry.raise_device_failure("default", "c1", "web", "port still taken")
    assert again.uuid == first.uuid
    body = warning_json(registry.get(first.uuid))
    assert body == {
        "status": "new", "uuid": first.uuid, "location": "none", "project": "default",
        "type": "Proxy device failed to start", "count": 2,
        "first_seen_at": "2026-01-02T03:04:05.600000Z",
        "last_seen_at": "2026-01-02T03:04:15.600000Z",
        "last_message": "port still taken", "severity": "moderate",
        "entity_url": "/1.0/instances/c1?project=default&device=web",
    }
    # Another device of the same instance has a warning of its own.
    other = registry.raise_device_failure("default", "c1", "dns", "x")
    assert other.uuid != first.uuid


def test_resolve_then_raise_reopens_but_acknowledged_stays(registry: WarningRegistry) -> None:
    w = registry.raise_device_failure("default", "c1", "web", "m")
    assert registry.failed_devices("c1")[0].device == "web"
    assert registry.resolve_device("default", "c1", "web")
    assert not registry.resolve_device("default", "c1", "web")  # already resolved
    assert registry.get(w.uuid).status == "resolved"
    assert registry.failed_devices() == []
    registry.raise_device_failure("default", "c1", "web", "m2")
    assert registry.get(w.uuid).status == "new"
    registry.set_status(w.uuid, "acknowledged")
    registry.raise_device_failure("default", "c1", "web", "m3")
    assert registry.get(w.uuid).status == "acknowledged"
    assert [f.message for f in registry.failed_devices("c1")] == ["m3"]  # still failed
    assert registry.failed_devices("c2") == []


def test_api_checks_use_lxd_texts(registry: WarningRegistry) -> None:
    w = registry.raise_device_failure("default", "c1", "web", "m")
    with pytest.raises(LxdError) as bad:
        registry.set_status(w.uuid, "bogus")
    assert (bad.value.status, bad.value.message) == (400, 'Invalid warning type "bogus"')
    with pytest.raises(LxdError) as forbidden:
        registry.set_status(w.uuid, "resolved")
    assert forbidden.value.status == 403
    assert forbidden.value.message == 'Status may only be set to "acknowledge" or "new"'
    with pytest.raises(NotFoundError, match="Warning not found"):
        registry.get("nope")
    with pytest.raises(NotFoundError, match="Warning not found"):
        registry.set_status("nope", "new")
    registry.delete(w.uuid)
    with pytest.raises(NotFoundError, match="Warning not found"):
        registry.delete(w.uuid)
    assert registry.list() == []


def test_warnings_survive_a_reopen_and_v2_databases_migrate(tmp_path: Path) -> None:
    path = tmp_path / "db"
    Store(path).close()
    db = sqlite3.connect(path)  # make it a v2 database, as the previous release left it
    db.execute("DROP TABLE warnings")
    db.execute("UPDATE schema_version SET version = 2")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version() == 3
    uuid = WarningRegistry(store).raise_device_failure("default", "c1", "web", "m").uuid
    store.close()
    assert WarningRegistry(Store(path)).get(uuid).last_message == "m"


def test_device_entity_urls_round_trip() -> None:
    url = device_entity_url("default", "c 1", "web/x")
    assert parse_device_entity_url(url) == ("default", "c 1", "web/x")
    assert parse_device_entity_url("/1.0/instances/c1?project=default") is None
    assert parse_device_entity_url("/1.0/networks/br0?device=x") is None
    assert WarningType.BRIDGE_NETFILTER_NOT_ENABLED.severity == "low"
