"""Durable desired state in SQLite: local instances and the devices the shim owns.

WAL journal, one writer (a lock around every write transaction), ``synchronous=FULL`` so a device
the API acknowledged survives ``kill -9`` of the daemon. Calls are short and made from the event
loop thread directly; a write is one small transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

# Each entry upgrades the schema from version (index) to version (index + 1).
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        config TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        pid_starttime INTEGER
    );
    CREATE TABLE devices (
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (instance, name)
    );
    """,
    # v2: lxdproxy-level power state of a local instance (lxc stop/start: devices off/on).
    "ALTER TABLE instances ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0",
    # v3: LXD-style warnings (GET /1.0/warnings), one row per (project, entity, type).
    """
    CREATE TABLE warnings (
        uuid TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        entity_url TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_seen_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        last_message TEXT NOT NULL,
        UNIQUE (project, entity_url, type)
    )
    """,
)

Devices = dict[str, dict[str, str]]


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class WarningRow:
    """A stored warning; times are RFC 3339 strings (UTC), as the API shows them."""

    uuid: str
    project: str
    entity_url: str
    type: str
    status: str  # new | acknowledged | resolved
    count: int
    first_seen_at: str
    last_seen_at: str
    last_message: str


@dataclass(frozen=True)
class InstanceRow:
    """A locally registered instance as stored (devices live in their own table)."""

    name: str
    type: str
    config: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    created_at: str = ""
    pid_starttime: int | None = None  # /proc/<pid>/stat starttime: tells a reused PID apart
    stopped: bool = False  # stopped through the API: devices are not realised


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=10
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"State database {self.path} has schema version {version}, newer than this "
                    f"lxdproxy understands ({SCHEMA_VERSION})"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (step + 1,))

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- instances (local backend) ----------------------------------------------------------

    def instance_names(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM instances ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def get_instance(self, name: str) -> InstanceRow | None:
        row = self._db.execute(
            "SELECT name, type, config, description, created_at, pid_starttime, stopped "
            "FROM instances WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return InstanceRow(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5],
                           bool(row[6]))

    def insert_instance(self, row: InstanceRow, devices: Devices) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM instances WHERE name = ?", (row.name,)).fetchone():
                raise StoreError(f"Instance {row.name!r} already stored")
            db.execute(
                "INSERT INTO instances (name, type, config, description, created_at, pid_starttime,"
                " stopped) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.name, row.type, _dump(row.config), row.description, row.created_at,
                 row.pid_starttime, int(row.stopped)),
            )
            _replace_devices(db, row.name, devices)

    def update_instance(self, row: InstanceRow, devices: Devices | None = None) -> None:
        """Replace an instance's row, and its devices when given, in one transaction."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE instances SET type = ?, config = ?, description = ?, pid_starttime = ?, "
                "stopped = ? WHERE name = ?",
                (row.type, _dump(row.config), row.description, row.pid_starttime,
                 int(row.stopped), row.name),
            )
            if cur.rowcount != 1:
                raise StoreError(f"Instance {row.name!r} is not stored")
            if devices is not None:
                _replace_devices(db, row.name, devices)

    def delete_instance(self, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM instances WHERE name = ?", (name,))
            db.execute("DELETE FROM devices WHERE instance = ?", (name,))

    # -- devices ------------------------------------------------------------------------------

    def get_devices(self, instance: str) -> Devices:
        rows = self._db.execute(
            "SELECT name, config FROM devices WHERE instance = ? ORDER BY name", (instance,)
        ).fetchall()
        return {name: json.loads(cfg) for name, cfg in rows}

    def set_devices(self, instance: str, devices: Devices) -> None:
        with self._write() as db:
            _replace_devices(db, instance, devices)

    def device_instances(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT instance FROM devices ORDER BY instance")
        return [r[0] for r in rows.fetchall()]

    # -- warnings -------------------------------------------------------------------------------

    def warnings(self) -> list[WarningRow]:
        """Oldest last-seen first, as LXD lists them."""
        rows = self._db.execute(f"SELECT {_WARNING_COLUMNS} FROM warnings "
                                "ORDER BY last_seen_at, uuid").fetchall()
        return [WarningRow(*r) for r in rows]

    def get_warning(self, uuid: str) -> WarningRow | None:
        row = self._db.execute(f"SELECT {_WARNING_COLUMNS} FROM warnings WHERE uuid = ?",
                               (uuid,)).fetchone()
        return WarningRow(*row) if row else None

    def find_warning(self, project: str, entity_url: str, type: str) -> WarningRow | None:
        row = self._db.execute(
            f"SELECT {_WARNING_COLUMNS} FROM warnings "
            "WHERE project = ? AND entity_url = ? AND type = ?",
            (project, entity_url, type)).fetchone()
        return WarningRow(*row) if row else None

    def put_warning(self, row: WarningRow) -> None:
        """Insert or replace the warning with this uuid."""
        with self._write() as db:
            db.execute(f"INSERT OR REPLACE INTO warnings ({_WARNING_COLUMNS}) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.uuid, row.project, row.entity_url, row.type, row.status, row.count,
                        row.first_seen_at, row.last_seen_at, row.last_message))

    def delete_warning(self, uuid: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM warnings WHERE uuid = ?", (uuid,)).rowcount == 1


_WARNING_COLUMNS = ("uuid, project, entity_url, type, status, count, first_seen_at, last_seen_at, "
                    "last_message")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _replace_devices(db: sqlite3.Connection, instance: str, devices: Devices) -> None:
    db.execute("DELETE FROM devices WHERE instance = ?", (instance,))
    db.executemany(
        "INSERT INTO devices (instance, name, config) VALUES (?, ?, ?)",
        [(instance, name, _dump(cfg)) for name, cfg in sorted(devices.items())],
    )
