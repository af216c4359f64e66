"""What one worker runs: a device per key, started from listening sockets it was handed.

An update (a start of a key that runs) builds the new device on the sockets it was given and
only then retires the old one: the old device stops accepting and closes its hold on the
listeners, its established connections run to their end, then its endpoints close. A socket
that both configurations listen on was sent again, so closing the old hold leaves it open and
no connect is refused. A start that fails leaves the old device as it was.

A spread UDP device (workers/udp_groups.py) comes with this worker's own socket per listener
and the listeners' reuseport maps; the table only keeps the maps (fds) for whoever asks for the
device's listeners next, and closes them with the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.model import InstanceType
from lxdproxy.errors import ConfigError, DeviceStartError
from lxdproxy.forward.budget import TrafficBudget
from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.device import DeviceParams, ForwardedDevice
from lxdproxy.forward.forwarder import START_ERROR_PREFIX
from lxdproxy.forward.plan import PlanError, RelayKind, plan_device
from lxdproxy.forward.stream_relay import RelayMode
from lxdproxy.netns import Namespaces
from lxdproxy.workers.protocol import DeviceKey, DeviceSpec

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    spec: DeviceSpec
    device: ForwardedDevice
    udp_owner: bool
    maps: list[int]

    def close_maps(self) -> None:
        maps, self.maps = self.maps, []
        for fd in maps:
            os.close(fd)


class DeviceTable:
    def __init__(self, *, connect_timeout: float, udp_idle_timeout: float,
                 budget: TrafficBudget, relay: RelayMode = RelayMode.COPY) -> None:
        self.relay = relay
        self.connect_timeout = connect_timeout
        self.udp_idle_timeout = udp_idle_timeout
        self.budget = budget  # this worker's fds for traffic, shared by its devices
        self._entries: dict[DeviceKey, _Entry] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: list[ForwardedDevice] = []  # still finishing connections
        self._locks: dict[DeviceKey, asyncio.Lock] = {}
        self.accepting = True

    # -- queries --------------------------------------------------------------------------------
    def specs(self) -> list[tuple[DeviceSpec, bool, int]]:
        """(spec, udp_owner, number of reuseport maps) of every device."""
        return [(e.spec, e.udp_owner, len(e.maps)) for e in self._entries.values()]

    def listener_fds(self, key: DeviceKey) -> tuple[list[int], int]:
        """Duplicates of the device's listening sockets in plan order, then of its reuseport
        maps, and how many maps (the caller sends and closes them). Raises KeyError for a key
        that does not run."""
        entry = self._entries[key]
        fds = [os.dup(sock.fileno()) for sock, _spec in entry.device.listeners]
        return fds + [os.dup(fd) for fd in entry.maps], len(entry.maps)

    def stats(self) -> dict[str, int]:
        devices = [e.device for e in self._entries.values()]
        every = devices + self._retired
        return {
            "devices": len(devices),
            "listeners": sum(len(d.listeners) for d in devices),
            "open_connections": sum(d.open_connections for d in every),
            "accepted": sum(d.accepted for d in every),
            "failed": sum(d.failed for d in every),
            "retiring": len(self._retired),
            "udp_sessions": sum(r.session_count for d in every for r in d.udp_relays),
        }

    def device_counters(self) -> dict[DeviceKey, dict[str, int]]:
        """Every device's counters and gauges as plain numbers; an updated device's old
        configuration shares its counters and adds the connections it is still finishing."""
        out = {}
        for key, entry in self._entries.items():
            snapshot = entry.device.counters_snapshot()
            for old in self._retired:
                if old.counters is entry.device.counters:
                    snapshot["connections_active"] += old.open_connections
                    snapshot["udp_sessions_active"] += sum(r.session_count for r in old.udp_relays)
            out[key] = snapshot
        return out

    @property
    def open_connections(self) -> int:
        return sum(d.open_connections for d in
                   [e.device for e in self._entries.values()] + self._retired)

    # -- changes --------------------------------------------------------------------------------
    async def start(self, spec: DeviceSpec, fds: list[int], *, udp_owner: bool,
                    udp_maps: int = 0) -> bool:
        """Start or update; False when it already ran exactly so (the fds are closed then).
        The last ``udp_maps`` fds are reuseport maps. Raises DeviceStartError with LXD's text;
        the fds are closed and nothing changed."""
        if not 0 <= udp_maps <= len(fds):
            for fd in fds:
                os.close(fd)
            raise DeviceStartError(f"{START_ERROR_PREFIX}{udp_maps} reuseport maps announced, "
                                   f"{len(fds)} descriptors received")
        split = len(fds) - udp_maps
        maps: list[int] = fds[split:]
        socks = [socket.socket(fileno=fd) for fd in fds[:split]]
        try:
            async with self._lock(spec.key):
                old = self._entries.get(spec.key)
                if (old is not None and old.spec.same_device(spec) and old.udp_owner == udp_owner
                        and len(old.maps) == udp_maps):
                    _close_all(socks)
                    return False
                if not self.accepting:
                    raise DeviceStartError("The worker is draining")
                device = await self._build(spec, socks, udp_owner,
                                           old.device.counters if old is not None else None)
                socks = []  # the device owns them now
                self._entries[spec.key] = _Entry(spec, device, udp_owner, maps)
                maps = []
                if old is not None:
                    old.close_maps()
                    self._retire(old.device)
                return True
        finally:
            _close_all(socks)
            for fd in maps:
                os.close(fd)

    async def _build(self, spec: DeviceSpec, socks: list[socket.socket], udp_owner: bool,
                     counters: DeviceCounters | None) -> ForwardedDevice:
        try:
            device = validate_proxy_device(spec.config, InstanceType(spec.instance_type))
            plan = plan_device(device)
        except (ConfigError, ValueError) as exc:
            raise DeviceStartError(f"{START_ERROR_PREFIX}{exc}") from None
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
        if len(socks) != len(plan.listeners):
            raise DeviceStartError(f"{START_ERROR_PREFIX}{len(plan.listeners)} listening "
                                   f"sockets needed, {len(socks)} received")
        listen_ns = spec.listen_ns or Namespaces.current()
        connect_ns = spec.connect_ns or Namespaces.current()
        params = DeviceParams(device, listen_ns, connect_ns, spec.instance_name)
        label = f"proxy {spec.key[0]}/{spec.key[1]}"
        running = ForwardedDevice(params, plan, label=label, connect_timeout=self.connect_timeout,
                                udp_idle_timeout=self.udp_idle_timeout, counters=counters,
                                budget=self.budget.device(label), relay=self.relay)
        try:
            await running.start(socks, read_datagrams=udp_owner
                                or plan.relay is not RelayKind.DATAGRAM)
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
        except OSError as exc:
            raise DeviceStartError(f"{START_ERROR_PREFIX}{exc.strerror or exc}") from None
        return running

    async def stop(self, key: DeviceKey) -> bool:
        """Close the device's listeners and connections now. False for an unknown key."""
        async with self._lock(key):
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            entry.close_maps()
            await entry.device.stop()
            return True

    def _retire(self, device: ForwardedDevice, timeout: float | None = None) -> None:
        self._retired.append(device)
        task = asyncio.get_running_loop().create_task(self._finish(device, timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish(self, device: ForwardedDevice, timeout: float | None) -> None:
        try:
            await device.stop_accepting()
            if not await device.wait_idle(timeout):
                log.info("%s: drain timeout: closing %d connections", device.label,
                         device.open_connections)
        finally:
            await device.stop()
            with contextlib.suppress(ValueError):
                self._retired.remove(device)

    async def drain(self, timeout: float | None) -> None:
        """Accept nothing more; return once every connection ended (or ``timeout`` passed)."""
        self.accepting = False
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            entry.close_maps()
            self._retire(entry.device, timeout)
        if self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def stop_all(self) -> None:
        self.accepting = False
        for key in list(self._entries):
            await self.stop(key)
        for device in list(self._retired):
            await device.stop()
        if self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def _lock(self, key: DeviceKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
