"""The SQLite store: schema versioning, round trips, atomic device replacement, durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lxdproxy.store import InstanceRow, Store, StoreError
from lxdproxy.store.db import SCHEMA_VERSION

ROW = InstanceRow(name="c1", type="container", config={"user.lxdproxy.pid": "42"},
                  description="d", created_at="2026-01-01T00:00:00Z", pid_starttime=7)
DEVICES = {"eth0": {"type": "nic", "ipv4.address": "198.18.0.11"},
           "web": {"type": "proxy", "listen": "tcp:0.0.0.0:80", "connect": "tcp:127.0.0.1:80"}}


def test_schema_version_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.schema_version() == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / "db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "db").close()
    db = sqlite3.connect(tmp_path / "db")
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(tmp_path / "db")


def test_instances_and_devices_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.insert_instance(ROW, DEVICES)
    store.close()
    store = Store(tmp_path / "db")
    assert store.instance_names() == ["c1"]
    assert store.get_instance("c1") == ROW
    assert store.get_devices("c1") == DEVICES
    assert store.device_instances() == ["c1"]
    store.close()


def test_duplicate_insert_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.insert_instance(ROW, DEVICES)
    with pytest.raises(StoreError):
        store.insert_instance(ROW, {})
    assert store.get_devices("c1") == DEVICES


def test_update_replaces_devices_in_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.insert_instance(ROW, DEVICES)
    new = InstanceRow(**{**ROW.__dict__, "config": {"user.lxdproxy.pid": "43"}})
    store.update_instance(new, {"eth0": DEVICES["eth0"]})
    assert store.get_instance("c1").config == {"user.lxdproxy.pid": "43"}
    assert store.get_devices("c1") == {"eth0": DEVICES["eth0"]}
    store.update_instance(new)  # devices untouched when not given
    assert store.get_devices("c1") == {"eth0": DEVICES["eth0"]}
    with pytest.raises(StoreError):
        store.update_instance(InstanceRow(name="nope", type="container"), {})
    assert store.get_devices("nope") == {}


def test_delete_removes_devices_too(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.insert_instance(ROW, DEVICES)
    store.delete_instance("c1")
    assert store.get_instance("c1") is None
    assert store.get_devices("c1") == {}


def test_shim_devices_for_foreign_instances(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.set_devices("lxd-c1", {"web": DEVICES["web"]})
    assert store.get_devices("lxd-c1") == {"web": DEVICES["web"]}
    assert store.instance_names() == []
    store.set_devices("lxd-c1", {})
    assert store.device_instances() == []


def test_v1_database_is_migrated(tmp_path: Path) -> None:
    from lxdproxy.store.db import _MIGRATIONS

    db = sqlite3.connect(tmp_path / "db")
    db.executescript(_MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO instances (name, type, config, created_at) VALUES "
               "('c1', 'container', '{}', 'x')")
    db.commit()
    db.close()
    store = Store(tmp_path / "db")
    assert store.schema_version() == SCHEMA_VERSION
    assert store.get_instance("c1").stopped is False
    store.update_instance(InstanceRow(name="c1", type="container", stopped=True))
    assert store.get_instance("c1").stopped is True
