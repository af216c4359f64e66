"""DeviceRuntime: the one registry of running proxy devices.

It realises a validated device: ``nat=true`` through the NAT runtime (nftables), everything else
through the data plane (the forwarder), with each side's namespaces taken from the bind side.
What it records per device (the instance as it was at start, and the device) is what reconcile
compares with the desired state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from lxdproxy.config.model import BindSide, ProxyDevice
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.model import Instance
from lxdproxy.instances.namespaces import instance_namespaces
from lxdproxy.instances.nic_discovery import with_host_names
from lxdproxy.manager.dynamic_nat import AddressSource, AddressWaits, DynamicNatDevice
from lxdproxy.nat.rules import device_label
from lxdproxy.nat.runtime import NatRuntime
from lxdproxy.nat.target import dynamic_nat_nic
from lxdproxy.netns import Namespaces

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (instance name, device name)


class DataPlane(Protocol):
    """What forwards the bytes of non-NAT devices: the worker pool (workers/), or the
    in-process Forwarder (forward/, ``--workers 0``)."""

    async def start(self, key: Key, device: ProxyDevice, *, listen_ns: Namespaces,
                    connect_ns: Namespaces, instance_name: str) -> None:
        """Start, or update in place a key that runs (a kept listener keeps its established
        connections; the same parameters again change nothing). Raises DeviceStartError
        (forkproxy's words): then nothing new stays open and a running key runs as before."""

    async def stop(self, key: Key) -> None: ...

    async def stop_all(self) -> None: ...

    def keys(self) -> list[Key]:
        """Every key it runs (after a control-plane restart: what the workers kept)."""

    async def source_counters(self) -> dict[str, dict[Key, dict[str, int]]]:
        """source (a process) -> key -> counter name -> value, plain numbers."""


@dataclass(frozen=True)
class RunningDevice:
    instance: Instance  # the instance as it was when the device started (pid, NICs)
    device: ProxyDevice


class DeviceRuntime:
    """Which devices run, and how. Not thread safe: used from the daemon's loop only."""

    def __init__(self, dataplane: DataPlane, nat: NatRuntime, *, addresses: AddressSource,
                 waits: AddressWaits, host_ns: Namespaces | None = None) -> None:
        """``host_ns`` stands for the host side; None = the daemon's own namespaces.
        ``addresses`` (the backend) and ``waits`` (the warnings) serve nat_dynamic devices."""
        self.dataplane = dataplane
        self.nat = nat
        self.addresses = addresses
        self.waits = waits
        self._host_ns = host_ns
        self._running: dict[Key, RunningDevice] = {}
        self._dynamic: dict[Key, DynamicNatDevice] = {}

    def running(self, instance_name: str) -> dict[str, RunningDevice]:
        return {dev: rd for (inst, dev), rd in self._running.items() if inst == instance_name}

    def running_devices(self) -> dict[Key, RunningDevice]:
        return dict(self._running)

    async def device_counters(self) -> dict[str, dict[Key, dict[str, int]]]:
        """Relay counters of the forwarded devices, by source (process), and source ``nat``:
        the nft counters of the NAT devices' rules (``nat_packets``, ``nat_bytes``)."""
        sources = await self.dataplane.source_counters()
        nat_keys = {device_label(inst, dev, rd.instance.project): (inst, dev)
                    for (inst, dev), rd in self._running.items() if rd.device.nat}
        if nat_keys:
            counts = await self.nat.counters()
            sources["nat"] = {key: {"nat_packets": counts[label][0],
                                    "nat_bytes": counts[label][1]}
                              for label, key in nat_keys.items() if label in counts}
        return sources

    async def start(self, instance: Instance, device_name: str, device: ProxyDevice) -> None:
        """Start one device (replacing it if it runs); raises DeviceStartError with the reason
        only: the caller adds LXD's ``Failed to start device "<dev>": `` prefix."""
        key = (instance.name, device_name)
        running = self._running.get(key)
        if running is not None and (running.device.nat or device.nat):
            await self.stop(*key)  # forwarded -> forwarded is updated in place by the data plane
        if device.nat:
            # Hairpin needs the NIC's bridge port; local instances may not name it.
            named = await with_host_names(instance, self._host_ns.net if self._host_ns else None)
            nic = dynamic_nat_nic(device, named) if device.nat_dynamic else None
            if nic is not None:
                dynamic = DynamicNatDevice(self.nat, self.waits, named, device_name, device, nic)
                await dynamic.start(self.addresses)
                self._dynamic[key] = dynamic
            else:
                await self.nat.apply(named, device_name, device)
        else:
            listen_ns, connect_ns = self._sides(instance, device)
            await self.dataplane.start(key, device, listen_ns=listen_ns, connect_ns=connect_ns,
                                       instance_name=instance.name)
        self._running[key] = RunningDevice(instance, device)
        log.info("started device %s/%s", instance.name, device_name)

    def _sides(self, instance: Instance, device: ProxyDevice) -> tuple[Namespaces, Namespaces]:
        try:
            host = self._host_ns or Namespaces.current()
            inst = instance_namespaces(instance)
        except (OSError, ProcessLookupError) as exc:
            raise DeviceStartError(f"Instance namespaces are not reachable: {exc}") from None
        return (host, inst) if device.bind is BindSide.HOST else (inst, host)

    async def stop(self, instance_name: str, device_name: str) -> None:
        """Stop a device if it runs; errors are logged (stopping must not fail a write)."""
        key = (instance_name, device_name)
        rd = self._running.pop(key, None)
        if rd is None:
            return
        try:
            if rd.device.nat:
                dynamic = self._dynamic.pop(key, None)
                if dynamic is not None:
                    await dynamic.close()  # no change may re-install what is removed next
                await self.nat.remove(instance_name, device_name, rd.instance.project)
            else:
                await self.dataplane.stop(key)
        except Exception:
            log.exception("stopping device %s/%s failed", instance_name, device_name)
        else:
            log.info("stopped device %s/%s", instance_name, device_name)

    async def stop_unclaimed(self) -> None:
        """Stop what the data plane runs that nobody started (after a control-plane restart:
        devices whose instance went away while no control plane watched)."""
        for key in self.dataplane.keys():
            if key not in self._running:
                log.info("stopping device %s/%s: no longer wanted", *key)
                await self.dataplane.stop(key)

    async def stop_instance(self, instance_name: str) -> None:
        for dev in sorted(self.running(instance_name)):
            await self.stop(instance_name, dev)

    async def stop_all(self) -> None:
        for inst, dev in sorted(self._running):
            await self.stop(inst, dev)
        try:
            await self.dataplane.stop_all()
        except Exception:
            log.exception("stopping the data plane failed")
