"""Local backend (the embedded default): instances are existing processes or named network
namespaces registered through ``POST /1.0/instances`` and kept in our own store.

An instance is ``config["user.lxdproxy.pid"]`` (its namespaces are those of that PID) or
``config["user.lxdproxy.netns"]`` (a named netns or nsfs path; net namespace only). It is
Running while that PID (the same process: its start time is recorded, so a reused PID does not
count) or that netns exists. Changes are found by polling once a second and reported to the
``watch`` callbacks, which re-create the instance's devices against the new namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lxdproxy.config.gostrconv import go_quote
from lxdproxy.config.model import InstanceType
from lxdproxy.config.names import check_instance_name, parse_ascii_uint
from lxdproxy.errors import ConfigError, LxdError, NotFoundError, NotSupportedError
from lxdproxy.instances.address_follow import (
    AddressChanged,
    AddressFollower,
    NetlinkAddressFollower,
)
from lxdproxy.instances.backend import InstanceChanged
from lxdproxy.instances.model import Devices, Instance, InstanceUpdate, Nic
from lxdproxy.instances.namespaces import instance_namespaces
from lxdproxy.instances.netstate import read_network_state
from lxdproxy.store import InstanceRow, Store

log = logging.getLogger("lxdproxy.instances.local")

PID_KEY = "user.lxdproxy.pid"
NETNS_KEY = "user.lxdproxy.netns"
NETNS_RUN_DIR = "/run/netns"

STATUS_CODES = {"Running": 103, "Stopped": 102}
POLL_BACKOFF_MAX = 30.0


def validate_instance_name(name: Any) -> str:
    # LXD's instance.ValidName (hostname rules: they become the container's hostname).
    if not isinstance(name, str) or not name:
        raise ConfigError("Instance name is required")
    return check_instance_name(name)


def _pid_of(pid_text: str | None) -> int | None:
    """The PID in ``user.lxdproxy.pid`` (ASCII digits only), or None."""
    return parse_ascii_uint(pid_text) if pid_text else None


def pid_starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19])


def netns_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"


def parse_anchor(config: Mapping[str, str], previous: InstanceRow | None = None
                 ) -> tuple[int | None, str | None, int | None]:
    """(pid, netns, pid_starttime) from an instance config; ConfigError when unusable.

    A PID or netns that did not change is kept as is even if it is gone (the instance is then
    Stopped), so the devices of a stopped instance can still be edited."""
    pid_text, netns = config.get(PID_KEY), config.get(NETNS_KEY)
    if previous is not None and (pid_text, netns) == (previous.config.get(PID_KEY),
                                                       previous.config.get(NETNS_KEY)):
        return _pid_of(pid_text), netns, previous.pid_starttime
    if pid_text and netns:
        raise ConfigError(f'Config "{PID_KEY}" and "{NETNS_KEY}" are mutually exclusive')
    if not pid_text and not netns:
        raise ConfigError(f'Local instances need config "{PID_KEY}" (a process ID) or '
                          f'"{NETNS_KEY}" (a network namespace name or path)')
    if pid_text:
        pid = _pid_of(pid_text)
        if pid is None or pid <= 0:
            raise ConfigError(f'Invalid value for config "{PID_KEY}": {go_quote(pid_text)} is '
                              "not a process ID")
        start = pid_starttime(pid)
        if start is None:
            raise ConfigError(f'Invalid value for config "{PID_KEY}": No process with PID {pid}')
        return pid, None, start
    assert netns is not None
    if not os.path.exists(netns_path(netns)):
        raise ConfigError(f'Invalid value for config "{NETNS_KEY}": Network namespace '
                          f'"{netns}" not found')
    return None, netns, None


def nics_from_devices(devices: Mapping[str, Mapping[str, str]],
                      config: Mapping[str, str]) -> tuple[Nic, ...]:
    nics = []
    for name in sorted(devices):
        dev = devices[name]
        if dev.get("type") != "nic":
            continue
        nictype = "bridged" if dev.get("network") else dev.get("nictype", "")
        nics.append(Nic(
            name=name,
            nictype=nictype,
            ipv4_address=dev.get("ipv4.address") or None,
            ipv6_address=dev.get("ipv6.address") or None,
            host_name=config.get(f"volatile.{name}.host_name") or dev.get("host_name") or None,
            interface=dev.get("name") or None,
        ))
    return tuple(nics)


class LocalBackend:
    kind = "local"

    def __init__(self, store: Store, *, poll_interval: float = 1.0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._callbacks: list[InstanceChanged] = []
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pidfds: dict[str, tuple[int, int]] = {}  # name -> (pid, pidfd)
        self._wakeups: set[asyncio.Task[None]] = set()

    # -- reads --------------------------------------------------------------------------------

    def _row(self, name: str) -> InstanceRow:
        row = self._store.get_instance(name)
        if row is None:
            raise NotFoundError("Instance not found")
        return row

    @staticmethod
    def _anchor_alive(row: InstanceRow) -> bool:
        pid_text, netns = row.config.get(PID_KEY), row.config.get(NETNS_KEY)
        pid = _pid_of(pid_text)
        if pid is not None:
            start = pid_starttime(pid)
            return start is not None and (row.pid_starttime in (None, start))
        if netns:
            return os.path.exists(netns_path(netns))
        return False

    @classmethod
    def _status(cls, row: InstanceRow) -> str:
        return "Running" if not row.stopped and cls._anchor_alive(row) else "Stopped"

    async def list_names(self) -> list[str]:
        return self._store.instance_names()

    async def get_record(self, name: str) -> dict[str, Any]:
        row = self._row(name)
        devices = self._store.get_devices(name)
        status = self._status(row)
        # Key order as LXD 5.0.2 sends it. The only profile is "default", which has no devices,
        # so expanded_* equal the local values.
        return {
            "architecture": platform.machine(),
            "config": dict(row.config),
            "devices": devices,
            "ephemeral": False,
            "profiles": ["default"],
            "stateful": False,
            "description": row.description,
            "created_at": row.created_at,
            "expanded_config": dict(row.config),
            "expanded_devices": {k: dict(v) for k, v in devices.items()},
            "name": row.name,
            "status": status,
            "status_code": STATUS_CODES[status],
            "last_used_at": row.created_at,
            "location": "none",
            "type": row.type,
            "project": "default",
        }

    async def get_instance(self, name: str) -> Instance:
        return self._instance(self._row(name), self._store.get_devices(name))

    def _instance(self, row: InstanceRow, devices: Devices) -> Instance:
        pid_text, netns = row.config.get(PID_KEY), row.config.get(NETNS_KEY)
        return Instance(
            name=row.name,
            type=InstanceType(row.type),
            status=self._status(row),
            pid=_pid_of(pid_text),
            netns=netns_path(netns) if netns and not pid_text else None,
            nics=nics_from_devices(devices, row.config),
        )

    async def stored_devices(self, name: str) -> Devices:
        self._row(name)
        return self._store.get_devices(name)

    async def managed_names(self) -> list[str]:
        return self._store.instance_names()

    async def network_forward_listen_addresses(self) -> tuple[str, ...]:
        return ()  # local instances have no managed networks, hence no network forwards

    async def get_state(self, name: str) -> dict[str, Any]:
        inst = await self.get_instance(name)
        network: dict[str, Any] | None = None
        if inst.running:
            net_path = f"/proc/{inst.pid}/ns/net" if inst.pid else inst.netns
            assert net_path is not None
            network = await read_network_state(net_path)
        return {
            "status": inst.status,
            "status_code": STATUS_CODES[inst.status],
            "disk": {},
            "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0},
            "network": network,
            "pid": (inst.pid or 0) if inst.running else 0,
            # We do not own the process tree of a registered PID, so we do not count it (LXD
            # reports -1 the same way when it cannot tell, e.g. a VM without its agent).
            "processes": -1 if inst.running else 0,
            "cpu": {"usage": 0},
        }

    async def follow_address(self, instance: Instance, nic: Nic, version: int,
                             changed: AddressChanged) -> AddressFollower:
        """Read and watch the address inside the instance's own netns (netlink)."""
        net_path = instance_namespaces(instance).net
        assert net_path is not None  # an instance always has its own netns
        follower = NetlinkAddressFollower(net_path, nic.instance_ifname, version, changed)
        try:
            await follower.start()
        except BaseException:
            await follower.close()
            raise
        return follower

    # -- writes -------------------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> None:
        name = validate_instance_name(body.get("name"))
        itype = body.get("type") or "container"  # checked by the manager
        source = body.get("source") or {"type": "none"}
        stype = source.get("type", "none") if isinstance(source, dict) else None
        if stype != "none":
            raise NotSupportedError(
                f'Source type "{stype}" is not supported by the local backend: register an '
                'existing process or netns with source type "none"')
        config = dict(body.get("config") or {})
        _pid, _netns, start = parse_anchor(config)
        if self._store.get_instance(name) is not None:
            raise LxdError(f'Instance "{name}" already exists', 409)
        description = body.get("description") if isinstance(body.get("description"), str) else ""
        row = InstanceRow(name=name, type=itype, config=config, description=description or "",
                          created_at=_now(), pid_starttime=start)
        self._store.insert_instance(row, dict(body.get("devices") or {}))
        self._remember(row)

    async def delete(self, name: str) -> None:
        self._row(name)
        self._store.delete_instance(name)
        self._seen.pop(name, None)
        self._untrack_pid(name)

    async def preview(self, name: str, update: InstanceUpdate) -> Instance:
        row = self._row(name)
        _pid, _netns, start = parse_anchor(update.config, row)
        return self._instance(self._updated_row(row, update, start), update.devices)

    async def save(self, name: str, update: InstanceUpdate) -> None:
        row = self._row(name)
        _pid, _netns, start = parse_anchor(update.config, row)
        new = self._updated_row(row, update, start)
        self._store.update_instance(new, update.devices)
        self._remember(new)

    async def set_stopped(self, name: str, stopped: bool) -> None:
        """A stopped local instance keeps its process (we never signal it) but has no devices
        realised. Raises if a start is asked for an instance whose process or netns is gone."""
        row = self._row(name)
        if not stopped and not self._anchor_alive(row):
            anchor = row.config.get(PID_KEY) or row.config.get(NETNS_KEY)
            raise LxdError(f'The instance\'s process or network namespace ("{anchor}") is gone: '
                           f'set "{PID_KEY}" or "{NETNS_KEY}" to its new one', 400)
        new = dataclasses.replace(row, stopped=stopped)
        self._store.update_instance(new)
        self._remember(new)

    @staticmethod
    def _updated_row(row: InstanceRow, update: InstanceUpdate, start: int | None) -> InstanceRow:
        return dataclasses.replace(row, config=dict(update.config), description=update.description,
                                   pid_starttime=start)

    def _remember(self, row: InstanceRow) -> None:
        """Our own writes are applied by the manager: record them as seen so the poller only
        reports changes that happened by themselves."""
        self._track_pid(row)
        self._seen[row.name] = self._identity(row)

    # -- watching -----------------------------------------------------------------------------

    def watch(self, callback: InstanceChanged) -> None:
        self._callbacks.append(callback)
        if self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the daemon starts it later
                self._task = asyncio.get_running_loop().create_task(self._poll())

    def _identity(self, row: InstanceRow) -> tuple[Any, ...]:
        status = self._status(row)
        netns = row.config.get(NETNS_KEY)
        ino = None
        if netns and status == "Running":
            with contextlib.suppress(OSError):
                st = os.stat(netns_path(netns))
                ino = (st.st_dev, st.st_ino)
        return (status, row.config.get(PID_KEY), row.pid_starttime, netns, ino, row.stopped)

    async def _notify(self, name: str) -> None:
        for cb in list(self._callbacks):
            try:
                await cb(name)
            except Exception:
                log.exception("instance watch callback failed for %s", name)

    # A pidfd turns "the init process exited" into an immediate wakeup; the 1 s poll stays as
    # the fallback (kernels without pidfd_open, netns-anchored instances, replaced netns).
    def _track_pid(self, row: InstanceRow) -> None:
        pid_text = row.config.get(PID_KEY)
        pid = _pid_of(pid_text)
        current = self._pidfds.get(row.name)
        if current is not None and current[0] == pid:
            return
        self._untrack_pid(row.name)
        if pid is None or self._status(row) != "Running":
            return
        try:
            loop = asyncio.get_running_loop()
            fd = os.pidfd_open(pid)
        except (RuntimeError, OSError, AttributeError):
            return
        loop.add_reader(fd, self._pid_exited, row.name)
        self._pidfds[row.name] = (pid, fd)

    def _untrack_pid(self, name: str) -> None:
        entry = self._pidfds.pop(name, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(entry[1])
            os.close(entry[1])

    def _pid_exited(self, name: str) -> None:
        self._untrack_pid(name)
        task = asyncio.get_running_loop().create_task(self.poll_once())
        self._wakeups.add(task)
        task.add_done_callback(self._wakeups.discard)

    async def poll_once(self) -> None:
        for name in self._store.instance_names():
            row = self._store.get_instance(name)
            if row is None:
                continue
            self._track_pid(row)
            ident = self._identity(row)
            if name not in self._seen:
                self._seen[name] = ident
                continue
            if ident != self._seen[name]:
                self._seen[name] = ident
                log.info("instance %s changed: %s", name, ident[0])
                await self._notify(name)

    async def _poll(self) -> None:
        delay = self._poll_interval
        while True:
            try:
                await self.poll_once()
            except (OSError, sqlite3.Error) as exc:
                # Out of file descriptors (EMFILE) and the like: one line, no traceback, and
                # back off (doubling, up to 30 s) instead of failing every second (issue 12).
                if delay == self._poll_interval:
                    log.warning("polling local instances failed: %s; retrying with back-off",
                                getattr(exc, "strerror", None) or exc)
                delay = min(max(delay, 0.1) * 2, POLL_BACKOFF_MAX)
            except Exception:
                log.exception("polling local instances failed")
            else:
                if delay != self._poll_interval:
                    log.warning("polling local instances works again")
                delay = self._poll_interval
            await asyncio.sleep(delay)

    async def close(self) -> None:
        for name in list(self._pidfds):
            self._untrack_pid(name)
        for task in list(self._wakeups):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
