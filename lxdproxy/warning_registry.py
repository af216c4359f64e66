"""LXD-style warnings: what went wrong with an entity, kept (in the store) until it is fixed.

LXD 5.0.2's rules (lxd/db/warnings.go ``UpsertWarning``, lxd/warnings.go), which we follow:
one warning per (project, entity, type); raising it again bumps ``count``, ``last_seen_at`` and
``last_message``, and re-opens a resolved one (status back to ``new``) but leaves an
acknowledged one acknowledged; resolving sets ``resolved``; a client may only set ``new`` or
``acknowledged``. ``Location`` is ``none``, the name LXD gives a standalone server.

LXD has no entity for a device, so a device's warning points at its instance with the device in
the query (``/1.0/instances/c1?project=default&device=web``): the URL still resolves to the
instance, and each device has its own warning.
"""

from __future__ import annotations

import datetime
import enum
import json
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partialmethod
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from lxdproxy.errors import LxdError, NotFoundError
from lxdproxy.store import Store, WarningRow

LOCATION = "none"


class WarningType(enum.Enum):
    """Closed set of types lxdproxy raises; the value is the text LXD shows in ``type``."""

    DEVICE_START_FAILED = "Proxy device failed to start"
    # user.lxdproxy.nat_dynamic: the device is up, its rules wait for the NIC's address.
    DEVICE_WAITING_FOR_ADDRESS = "Proxy device waiting for an instance address"
    # LXD's own type (warningtype.ProxyBridgeNetfilterNotEnabled), for NAT's hairpin check.
    BRIDGE_NETFILTER_NOT_ENABLED = "Proxy bridge netfilter not enabled"

    @property
    def severity(self) -> str:
        return "moderate" if self is WarningType.DEVICE_START_FAILED else "low"


class WarningStatus(enum.Enum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


def device_entity_url(project: str, instance: str, device: str) -> str:
    return (f"/1.0/instances/{quote(instance, safe='')}?project={quote(project, safe='')}"
            f"&device={quote(device, safe='')}")


def parse_device_entity_url(url: str) -> tuple[str, str, str] | None:
    """(project, instance, device) of a URL made by ``device_entity_url``, else None."""
    parts = urlsplit(url)
    prefix = "/1.0/instances/"
    if not parts.path.startswith(prefix) or "/" in parts.path[len(prefix):]:
        return None
    query = parse_qs(parts.query)
    if "device" not in query:
        return None
    return (query.get("project", ["default"])[0], unquote(parts.path[len(prefix):]),
            query["device"][0])


@dataclass(frozen=True)
class FailedDevice:
    """A device with an open start-failure warning: its entity URL parsed, and the last text."""

    project: str
    instance: str
    device: str
    message: str


def rfc3339(moment: datetime.datetime) -> str:
    """Fixed-width UTC (sorts as text; Go's time.Time parses it)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class WarningRegistry:
    """Raise, resolve and read warnings; every change is persisted before it returns."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime.datetime] = _utcnow) -> None:
        self._store = store
        self._clock = clock

    # -- raised by the daemon -------------------------------------------------------------------

    def raise_warning(self, project: str, entity_url: str, type: WarningType,
                      message: str) -> WarningRow:
        now = rfc3339(self._clock())
        old = self._store.find_warning(project, entity_url, type.value)
        if old is None:
            row = WarningRow(str(uuid_mod.uuid4()), project, entity_url, type.value,
                             WarningStatus.NEW.value, 1, now, now, message)
        else:
            status = (WarningStatus.NEW.value if old.status == WarningStatus.RESOLVED.value
                      else old.status)
            row = replace(old, status=status, count=old.count + 1, last_seen_at=now,
                          last_message=message)
        self._store.put_warning(row)
        return row

    def resolve(self, project: str, entity_url: str, type: WarningType) -> bool:
        """Mark it resolved (True), or do nothing if there is none or it already is."""
        old = self._store.find_warning(project, entity_url, type.value)
        if old is None or old.status == WarningStatus.RESOLVED.value:
            return False
        self._store.put_warning(replace(old, status=WarningStatus.RESOLVED.value))
        return True

    def raise_for_device(self, type: WarningType, project: str, instance: str, device: str,
                         message: str) -> WarningRow:
        return self.raise_warning(project, device_entity_url(project, instance, device), type,
                                  message)

    def resolve_for_device(self, type: WarningType, project: str, instance: str,
                           device: str) -> bool:
        return self.resolve(project, device_entity_url(project, instance, device), type)

    # (project, instance, device[, message]): what the device manager reports.
    raise_device_failure = partialmethod(raise_for_device, WarningType.DEVICE_START_FAILED)
    resolve_device = partialmethod(resolve_for_device, WarningType.DEVICE_START_FAILED)
    raise_device_waiting = partialmethod(raise_for_device, WarningType.DEVICE_WAITING_FOR_ADDRESS)
    resolve_device_waiting = partialmethod(resolve_for_device,
                                           WarningType.DEVICE_WAITING_FOR_ADDRESS)

    def failed_devices(self, instance: str | None = None) -> list[FailedDevice]:
        """Devices with an open (new or acknowledged) start-failure warning."""
        return self._open_device_warnings(WarningType.DEVICE_START_FAILED, instance)

    def waiting_devices(self, instance: str | None = None) -> list[FailedDevice]:
        """Devices that are up but wait for an instance address (nat_dynamic)."""
        return self._open_device_warnings(WarningType.DEVICE_WAITING_FOR_ADDRESS, instance)

    def _open_device_warnings(self, type: WarningType,
                              instance: str | None) -> list[FailedDevice]:
        out = []
        for row in self._store.warnings():
            if row.type != type.value or row.status == WarningStatus.RESOLVED.value:
                continue
            parsed = parse_device_entity_url(row.entity_url)
            if parsed is None or (instance is not None and parsed[1] != instance):
                continue
            out.append(FailedDevice(*parsed, row.last_message))
        return out

    # -- the API --------------------------------------------------------------------------------

    def list(self, project: str | None = None) -> list[WarningRow]:
        return [w for w in self._store.warnings() if project in (None, w.project)]

    def get(self, uuid: str) -> WarningRow:
        row = self._store.get_warning(uuid)
        if row is None:
            raise NotFoundError("Warning not found")
        return row

    def set_status(self, uuid: str, status: str) -> None:
        """``PUT /1.0/warnings/<uuid>``, with LXD's checks and texts."""
        if status not in {s.value for s in WarningStatus}:
            raise LxdError(f"Invalid warning type {_go_quote(status)}", 400)
        if status == WarningStatus.RESOLVED.value:
            raise LxdError('Status may only be set to "acknowledge" or "new"', 403)
        row = self.get(uuid)
        self._store.put_warning(replace(row, status=status))

    def delete(self, uuid: str) -> None:
        if not self._store.delete_warning(uuid):
            raise NotFoundError("Warning not found")


def warning_json(row: WarningRow) -> dict[str, Any]:
    """LXD's api.Warning (shared/api/warning.go), key for key."""
    return {
        "status": row.status,
        "uuid": row.uuid,
        "location": LOCATION,
        "project": row.project,
        "type": row.type,
        "count": row.count,
        "first_seen_at": row.first_seen_at,
        "last_seen_at": row.last_seen_at,
        "last_message": row.last_message,
        "severity": WarningType(row.type).severity if row.type in _TYPE_VALUES else "low",
        "entity_url": row.entity_url,
    }


_TYPE_VALUES = frozenset(t.value for t in WarningType)


def _go_quote(text: str) -> str:
    """Go's %q for the plain strings a status is (JSON escaping is the same for those)."""
    return json.dumps(text, ensure_ascii=False)
