"""The data plane's front door: every non-NAT proxy device of every instance, in one process.

LXD runs one ``forkproxy`` process (~35 MB) per device; here a device is a few sockets on the
daemon's event loop. ``key`` is ``(instance_name, device_name)``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from lxdproxy.config.model import ProxyDevice
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.budget import TrafficBudget
from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.device import DeviceParams, ForwardedDevice
from lxdproxy.forward.limits import CONNECT_TIMEOUT, UDP_IDLE_TIMEOUT
from lxdproxy.forward.plan import PlanError, plan_device
from lxdproxy.forward.stream_relay import RelayMode
from lxdproxy.netns import Namespaces
from lxdproxy.netns.protected_paths import ProtectedPaths

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]
START_ERROR_PREFIX = "Error occurred when starting proxy device: Error: "
PARKED_COUNTERS = 1024  # counters of stopped devices kept for when they start again


@dataclass(frozen=True)
class ForwarderStats:
    devices: int
    listeners: int
    open_connections: int
    accepted: int
    failed: int


class Forwarder:
    """Starts, stops and updates proxy devices on the running event loop.

    Calls for one key are serialised (a lock per key), so an update never races a stop.
    """

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT,
                 udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
                 protected_paths: ProtectedPaths | None = None,
                 budget: TrafficBudget | None = None,
                 relay: RelayMode = RelayMode.COPY) -> None:
        self.relay = relay  # how streams move their bytes (stream_relay.RelayMode)
        self.protected_paths = protected_paths  # the daemon's own: no device may listen there
        self.budget = budget or TrafficBudget()  # fds for traffic, shared by every device
        self.connect_timeout = connect_timeout
        self.udp_idle_timeout = udp_idle_timeout
        self._devices: dict[DeviceKey, ForwardedDevice] = {}
        self._locks: dict[DeviceKey, asyncio.Lock] = {}
        # A device's counters outlive its stop: a config change is stop + start (here or in
        # the manager), and its counters must carry on, not restart from zero. Stopped ones
        # are kept, least recently started first, up to PARKED_COUNTERS of them.
        self._counters: dict[DeviceKey, DeviceCounters] = {}

    # -- public API -----------------------------------------------------------------------------
    async def start(self, key: DeviceKey, device: ProxyDevice, *, listen_ns: Namespaces,
                    connect_ns: Namespaces, instance_name: str) -> None:
        """Start a device; raises DeviceStartError with LXD's text (nothing stays open then).
        A key that runs is updated; the same parameters again are a no-op."""
        params = DeviceParams(device, listen_ns, connect_ns, instance_name)
        if key in self._devices:
            if self._devices[key].params != params:
                await self._update(key, params)
            return
        async with self._lock(key):
            if key in self._devices:
                raise DeviceStartError(f"Proxy device {key[1]!r} of {key[0]!r} is already running")
            await self._start(key, params)

    async def stop(self, key: DeviceKey) -> None:
        """Stop a device and release everything it holds. Stopping an unknown key is a no-op."""
        async with self._lock(key):
            await self._stop(key)

    async def _update(self, key: DeviceKey, params: DeviceParams) -> None:
        """In this process any change is stop + start. If the new config cannot start, the old
        device is started again and the error raised (LXD leaves the device down until the next
        restart, spec §6/§9.12). The worker pool keeps established connections instead."""
        async with self._lock(key):
            old = self._devices.get(key)
            await self._stop(key)
            try:
                await self._start(key, params)
            except DeviceStartError:
                if old is not None:
                    try:
                        await self._start(key, old.params)
                    except DeviceStartError as restore_error:
                        log.error("%s: could not restore the previous config: %s",
                                  _label(key), restore_error)
                raise

    async def stop_all(self) -> None:
        for key in list(self._devices):
            await self.stop(key)

    def active(self, key: DeviceKey) -> bool:
        return key in self._devices

    def keys(self) -> list[DeviceKey]:
        return list(self._devices)

    def device(self, key: DeviceKey) -> ProxyDevice | None:
        running = self._devices.get(key)
        return running.params.device if running else None

    def open_connections(self, key: DeviceKey | None = None) -> int:
        if key is not None:
            running = self._devices.get(key)
            return running.open_connections if running else 0
        return sum(d.open_connections for d in self._devices.values())

    def pooled_sockets(self) -> int:
        """Unconnected target sockets held ready by the running devices (fds, for accounting)."""
        return sum(d.endpoints.pooled_sockets() for d in self._devices.values())

    def device_counters(self) -> dict[DeviceKey, dict[str, int]]:
        """Every running device's counters and gauges, as plain numbers (the stats message)."""
        return {key: d.counters_snapshot() for key, d in self._devices.items()}

    async def source_counters(self) -> dict[str, dict[DeviceKey, dict[str, int]]]:
        """The counters by source: this process is the only one."""
        return {"main": self.device_counters()}

    def stats(self) -> ForwarderStats:
        devices = list(self._devices.values())
        return ForwarderStats(
            devices=len(devices),
            listeners=sum(len(d.listeners) for d in devices),
            open_connections=sum(d.open_connections for d in devices),
            accepted=sum(d.accepted for d in devices),
            failed=sum(d.failed for d in devices),
        )

    # -- internals ------------------------------------------------------------------------------
    def _lock(self, key: DeviceKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _start(self, key: DeviceKey, params: DeviceParams) -> None:
        try:
            plan = plan_device(params.device)
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
        counters = self._counters.pop(key, None) or DeviceCounters()
        self._counters[key] = counters  # now the most recently started
        stopped = [k for k in self._counters if k not in self._devices and k != key]
        for parked in stopped[:max(0, len(stopped) - PARKED_COUNTERS)]:
            del self._counters[parked]
        running = ForwardedDevice(params, plan, label=_label(key),
                                connect_timeout=self.connect_timeout,
                                udp_idle_timeout=self.udp_idle_timeout, counters=counters,
                                protected=self.protected_paths,
                                budget=self.budget.device(_label(key)), relay=self.relay)
        try:
            await running.start()
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
        self._devices[key] = running

    async def _stop(self, key: DeviceKey) -> None:
        running = self._devices.pop(key, None)
        if running is not None:
            await running.stop()


def _label(key: DeviceKey) -> str:
    return f"proxy {key[0]}/{key[1]}"
