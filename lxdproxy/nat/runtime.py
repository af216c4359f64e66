"""What the daemon calls for NAT devices: start, stop, and periodic repair (asyncio API).

One ``NatApplier`` per (network namespace, table) is kept here, so repair knows every device
that should be present. The blocking work runs in a worker thread (never on the event loop's
thread: pyroute2, used for conntrack and hairpin, drives an asyncio loop of its own), which hands
it to the netns executor's thread when the namespace is not the daemon's own.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from lxdproxy.config.model import ProxyDevice
from lxdproxy.instances.model import Instance
from lxdproxy.nat.apply import NatApplier
from lxdproxy.nat.hairpin import setup_hairpin
from lxdproxy.nat.rules import DEFAULT_TABLE, NatRuleSet, build_nat_ruleset, device_label
from lxdproxy.netns import netns_executor, ns_identity

log = logging.getLogger(__name__)

_appliers: dict[tuple[tuple[int, int], str], NatApplier] = {}
_lock = threading.Lock()


def nat_applier(net_path: str | None = None, table: str = DEFAULT_TABLE) -> NatApplier:
    """The shared applier for that namespace and table."""
    identity = netns_executor(net_path).identity
    with _lock:
        applier = _appliers.get((identity, table))
        if applier is None:
            applier = _appliers[(identity, table)] = NatApplier(net_path, table)
        return applier


def forget_namespace(net_path: str) -> None:
    """Drop the appliers of a namespace that is going away (their rules die with it)."""
    try:
        identity = ns_identity(net_path)
    except FileNotFoundError:
        return
    with _lock:
        for key in [k for k in _appliers if k[0] == identity]:
            del _appliers[key]


def _start_sync(applier: NatApplier, ruleset: NatRuleSet) -> None:
    nic = ruleset.target.nic
    applier.call_in_namespace(setup_hairpin, ruleset.version, nic.nictype, nic.host_name, ruleset.label)
    applier.apply(ruleset)


async def apply_device(
    instance: Instance,
    device_name: str,
    device: ProxyDevice,
    *,
    net_path: str | None = None,
    table: str = DEFAULT_TABLE,
) -> NatRuleSet:
    """Start a NAT device: resolve the target, enable hairpin, install the rules.

    ``net_path`` is the host-side network namespace (where the listen IP lives); raises
    ``DeviceStartError`` with LXD's messages. Re-applying the same device is idempotent.
    """
    ruleset = build_nat_ruleset(device, instance, device_name, table=table)
    applier = nat_applier(net_path, table)
    await asyncio.to_thread(_start_sync, applier, ruleset)
    return ruleset


async def remove_device(
    instance_name: str,
    device_name: str,
    *,
    project: str = "default",
    net_path: str | None = None,
    table: str = DEFAULT_TABLE,
) -> bool:
    """Stop a NAT device: delete exactly its chains (and our table once empty)."""
    label = device_label(instance_name, device_name, project)
    return await asyncio.to_thread(nat_applier(net_path, table).remove, label)


async def repair_all() -> list[str]:
    """One ``check_and_repair`` pass over every applier; returns the repaired labels."""
    with _lock:
        appliers = list(_appliers.values())
    repaired: list[str] = []
    for applier in appliers:
        try:
            repaired += await asyncio.to_thread(applier.check_and_repair)
        except Exception:  # one broken namespace must not stop the others' repair
            log.exception("NAT repair failed in %s (table %s)", applier.net_path, applier.table)
    return repaired


async def watch(interval: float = 10.0) -> None:
    """Repair NAT rules every ``interval`` seconds, forever (cancel the task to stop)."""
    while True:
        await asyncio.sleep(interval)
        await repair_all()
