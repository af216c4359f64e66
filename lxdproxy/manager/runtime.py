"""DeviceRuntime: realises proxy devices, dispatching ``nat=true`` to nftables and everything
else to the asyncio Forwarder, with each side's namespaces taken from the bind side.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from lxdproxy.config.model import BindSide, ProxyDevice
from lxdproxy.errors import DeviceStartError, LxdError, NotSupportedError
from lxdproxy.instances.model import Instance

log = logging.getLogger("lxdproxy.manager.runtime")

Key = tuple[str, str]  # (instance name, device name)


@dataclass(frozen=True)
class RunningDevice:
    instance: Instance  # the instance as it was when the device started (pid, NICs)
    device: ProxyDevice
    nat: bool


class DeviceRuntime:
    """Which devices run, and how. Not thread safe: used from the daemon's loop only."""

    def __init__(self, *, nft_table: str = "lxdproxy", forwarder: Any = None,
                 host_ns: Any = None) -> None:
        """``host_ns`` (a Namespaces) stands for the host side; None = the daemon's own
        namespaces. Tests pass a lab netns so nothing touches the machine's namespace."""
        self.nft_table = nft_table
        self._host_ns = host_ns
        self._forwarder = forwarder
        self._running: dict[Key, RunningDevice] = {}

    # -- lazily built collaborators: the daemon runs without NAT support if nftables is absent

    def _get_forwarder(self) -> Any:
        if self._forwarder is None:
            try:
                from lxdproxy.forward import Forwarder  # type: ignore[attr-defined]
            except ImportError as exc:
                raise NotSupportedError(f"Proxy forwarding is not available: {exc}") from None
            self._forwarder = Forwarder(asyncio.get_running_loop())
        return self._forwarder

    # -- queries ------------------------------------------------------------------------------

    def running(self, instance_name: str) -> dict[str, RunningDevice]:
        return {dev: rd for (inst, dev), rd in self._running.items() if inst == instance_name}

    def is_running(self, instance_name: str, device_name: str) -> bool:
        return (instance_name, device_name) in self._running

    def updates_in_place(self, key: Key, device: ProxyDevice) -> bool:
        """A running forwarded device changing to another forwarded config: the forwarder
        updates it in place (a kept listener keeps its established connections; a refused
        config leaves the old one running), so no stop first."""
        rd = self._running.get(key)
        return rd is not None and not rd.nat and not device.nat

    # -- start / stop -------------------------------------------------------------------------

    async def start(self, instance: Instance, device_name: str, device: ProxyDevice) -> None:
        """Start one device; raises DeviceStartError (or another LxdError) with the reason only;
        the caller adds LXD's ``Failed to start device "<dev>": `` prefix."""
        key = (instance.name, device_name)
        if key in self._running and not self.updates_in_place(key, device):
            await self.stop(*key)
        if device.nat:
            await self._start_nat(instance, device_name, device)
        else:
            await self._start_forward(instance, device_name, device)
        self._running[key] = RunningDevice(instance, device, device.nat)
        log.info("started device %s/%s", instance.name, device_name)

    async def _start_forward(self, instance: Instance, device_name: str,
                             device: ProxyDevice) -> None:
        from lxdproxy.netns import Namespaces

        try:
            host = self._host_ns or Namespaces.current()
            inst = Namespaces.of_instance(instance)
        except (OSError, ProcessLookupError) as exc:
            raise DeviceStartError(f"Instance namespaces are not reachable: {exc}") from None
        listen_ns, connect_ns = (host, inst) if device.bind is BindSide.HOST else (inst, host)
        fwd = self._get_forwarder()
        await fwd.start((instance.name, device_name), device, listen_ns=listen_ns,
                        connect_ns=connect_ns, instance_name=instance.name,
                        instance_pid=instance.pid)

    def _host_net_path(self) -> str | None:
        return self._host_ns.net if self._host_ns is not None else None

    async def _start_nat(self, instance: Instance, device_name: str, device: ProxyDevice) -> None:
        try:
            from lxdproxy.nat import runtime as nat_runtime
        except ImportError as exc:
            raise NotSupportedError(f"NAT mode is not available: {exc}") from None
        from lxdproxy.instances.nic_discovery import with_host_names

        # Hairpin needs the NIC's bridge port; local instances may not name it.
        instance = await with_host_names(instance, self._host_net_path())
        try:
            # Resolves the target NIC, enables hairpin on its bridge port, installs the rules.
            await nat_runtime.apply_device(instance, device_name, device,
                                           net_path=self._host_net_path(), table=self.nft_table)
        except LxdError:
            raise
        except Exception as exc:  # libnftables reports failures as plain exceptions
            raise DeviceStartError(f"Failed to apply NAT rules: {exc}") from None

    async def _stop_nat(self, rd: RunningDevice, device_name: str) -> None:
        from lxdproxy.nat import runtime as nat_runtime

        await nat_runtime.remove_device(rd.instance.name, device_name, project=rd.instance.project,
                                        net_path=self._host_net_path(), table=self.nft_table)

    async def stop(self, instance_name: str, device_name: str) -> None:
        """Stop a device if it runs; errors are logged (stopping must not fail a write)."""
        key = (instance_name, device_name)
        rd = self._running.pop(key, None)
        if rd is None:
            return
        try:
            if rd.nat:
                await self._stop_nat(rd, device_name)
            else:
                await self._get_forwarder().stop(key)
        except Exception:
            log.exception("stopping device %s/%s failed", instance_name, device_name)
        else:
            log.info("stopped device %s/%s", instance_name, device_name)

    async def stop_instance(self, instance_name: str) -> None:
        for dev in sorted(self.running(instance_name)):
            await self.stop(instance_name, dev)

    async def stop_all(self) -> None:
        for inst, dev in sorted(self._running):
            await self.stop(inst, dev)
        if self._forwarder is not None and hasattr(self._forwarder, "stop_all"):
            try:
                await self._forwarder.stop_all()
            except Exception:
                log.exception("stopping the forwarder failed")
