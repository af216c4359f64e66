"""NAT devices at runtime: start, stop, and periodic repair (asyncio API), as one object.

``NatRuntime`` keeps one ``NatApplier`` per (network namespace, table): the namespace is the
host side, where the listen address lives. The blocking work runs in a worker thread (never on
the event loop's thread: pyroute2, used for conntrack and hairpin, drives an asyncio loop of its
own), which hands it to the netns executor's thread when the namespace is not the daemon's own.
"""

from __future__ import annotations

import asyncio
import logging

from lxdproxy.config.model import ProxyDevice
from lxdproxy.errors import DeviceStartError, LxdError
from lxdproxy.instances.model import Instance
from lxdproxy.nat.apply import NatApplier
from lxdproxy.nat.hairpin import setup_hairpin
from lxdproxy.nat.rules import DEFAULT_TABLE, NatRuleSet, build_nat_ruleset, device_label
from lxdproxy.nat.target import NatTarget
from lxdproxy.netns import netns_executor
from lxdproxy.periodic import Periodic

log = logging.getLogger(__name__)


def _start_sync(applier: NatApplier, ruleset: NatRuleSet) -> None:
    nic = ruleset.target.nic
    applier.call_in_namespace(setup_hairpin, ruleset.version, nic.nictype, nic.host_name,
                              ruleset.label)
    applier.apply(ruleset)


class NatRuntime:
    """The NAT rules of every running NAT device, in the host-side namespace ``net_path``
    (None: the daemon's own) and nftables table ``table``."""

    def __init__(self, *, net_path: str | None = None, table: str = DEFAULT_TABLE,
                 repair_interval: float = 10.0) -> None:
        self.net_path = net_path
        self.table = table
        self._applier: NatApplier | None = None
        self._repair = Periodic(repair_interval, self.repair_once)

    @property
    def applier(self) -> NatApplier:
        if self._applier is None:
            netns_executor(self.net_path)  # fails early if the namespace is gone
            self._applier = NatApplier(self.net_path, self.table)
        return self._applier

    async def apply(self, instance: Instance, device_name: str, device: ProxyDevice,
                    target: NatTarget | None = None) -> NatRuleSet:
        """Start a NAT device: resolve the target, enable hairpin, install the rules.

        Raises ``DeviceStartError`` with LXD's messages. Re-applying the same device is
        idempotent (one atomic transaction: there is no moment without the rules)."""
        ruleset = build_nat_ruleset(device, instance, device_name, table=self.table,
                                    target=target)
        try:
            await asyncio.to_thread(_start_sync, self.applier, ruleset)
        except LxdError:
            raise
        except Exception as exc:  # libnftables reports failures as plain exceptions
            raise DeviceStartError(f"Failed to apply NAT rules: {exc}") from None
        return ruleset

    async def remove(self, instance_name: str, device_name: str, project: str = "default") -> bool:
        """Stop a NAT device: delete exactly its chains (and our table once empty)."""
        label = device_label(instance_name, device_name, project)
        return await asyncio.to_thread(self.applier.remove, label)

    async def repair_once(self) -> list[str]:
        """Put back every device's rules that vanished or changed; returns the repaired labels."""
        if self._applier is None:
            return []
        try:
            return await asyncio.to_thread(self._applier.check_and_repair)
        except Exception:  # a broken namespace is logged; repair goes on next interval
            log.exception("NAT repair failed in %s (table %s)", self.net_path, self.table)
            return []

    async def counters(self) -> dict[str, tuple[int, int]]:
        """{label: (packets, bytes)} of the running NAT devices, from their rules' counters."""
        if self._applier is None:
            return {}
        return await asyncio.to_thread(self._applier.counters)

    def start_repair(self) -> None:
        """Repair every ``repair_interval`` seconds until ``close``."""
        self._repair.start()

    async def close(self) -> None:
        await self._repair.stop()
