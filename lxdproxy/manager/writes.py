"""What a write asks for, validated, and the device diff it implies (pure: no I/O).

LXD semantics (lxd/instance_put.go, instance_patch.go):
- PUT replaces ``config`` and the local ``devices`` (absent or ``{}`` deletes every device);
  ``expanded_*``, ``created_at``, ``status``, ``name`` are read-only and ignored (pylxd sends them).
- PATCH merges ``config`` keys and ``devices`` by name (a device replaces the whole device,
  ``null`` deletes it).
- A key whose value is empty is dropped, in ``config`` and in every device (``lxc config device
  unset`` sends the key with ""; LXD stores nothing for it).
- Proxy devices have no live-updatable keys for LXD: any change is a restart. The data plane keeps
  established connections where the listener did not change (see forward/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.gostrconv import go_quote
from lxdproxy.config.model import InstanceType, ProxyDevice
from lxdproxy.config.names import check_device_name
from lxdproxy.errors import ConfigError
from lxdproxy.instances.model import Devices, Instance, InstanceUpdate


@dataclass(frozen=True)
class InstancePatch:
    """A decoded PATCH body: ``devices`` values of None delete; ``description`` None keeps."""

    config: dict[str, str]
    devices: dict[str, dict[str, str] | None]
    description: str | None = None


def without_empty_values(values: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if v != ""}


def normalised(update: InstanceUpdate) -> InstanceUpdate:
    """LXD's storage form: empty-valued keys dropped from config and from every device."""
    return InstanceUpdate(
        config=without_empty_values(update.config),
        devices={name: without_empty_values(dev) for name, dev in update.devices.items()},
        description=update.description,
    )


def from_patch(record: Mapping[str, Any], patch: InstancePatch) -> InstanceUpdate:
    config = dict(record.get("config", {}))
    config.update(patch.config)
    devices: Devices = {k: dict(v) for k, v in record.get("devices", {}).items()}
    for name, dev in patch.devices.items():
        if dev is None:
            devices.pop(name, None)
        else:
            devices[name] = dev
    description = record.get("description", "") if patch.description is None else patch.description
    return normalised(InstanceUpdate(config=config, devices=devices, description=description))


def current_state(record: Mapping[str, Any]) -> InstanceUpdate:
    return InstanceUpdate(config=dict(record.get("config", {})),
                          devices={k: dict(v) for k, v in record.get("devices", {}).items()},
                          description=record.get("description", ""))


def _validation_failed(device_name: str, message: str) -> ConfigError:
    return ConfigError(
        f"Invalid devices: Device validation failed for {go_quote(device_name)}: {message}"
    )


def validate_devices(devices: Mapping[str, Mapping[str, str]],
                     instance_type: InstanceType = InstanceType.CONTAINER,
                     forward_listen_addresses: tuple[str, ...] = ()) -> dict[str, ProxyDevice]:
    """Validate every device (sorted by name, so the reported error is deterministic, unlike
    LXD's map order) and return the parsed proxy devices. Non-proxy devices only need a type:
    they are stored and shown, never realised."""
    proxies: dict[str, ProxyDevice] = {}
    for name in sorted(devices):
        dev = devices[name]
        check_device_name(name)
        if not dev.get("type"):
            # LXD 5.0.2's words (device_load.go: deviceLoad -> "Missing device type in config").
            raise _validation_failed(name, f"Failed loading device {go_quote(name)}: Missing "
                                           "device type in config")
        if dev["type"] != "proxy":
            continue
        try:
            proxies[name] = validate_proxy_device(
                dev, instance_type, forward_listen_addresses=forward_listen_addresses)
        except ConfigError as exc:
            raise _validation_failed(name, exc.message) from None
    return proxies


def stored_proxies(devices: Mapping[str, Mapping[str, str]],
                   instance_type: InstanceType) -> dict[str, ProxyDevice | None]:
    """Parsed stored proxies; one that no longer validates maps to None (never started)."""
    out: dict[str, ProxyDevice | None] = {}
    for name, dev in devices.items():
        if dev.get("type") != "proxy":
            continue
        try:
            out[name] = validate_devices({name: dev}, instance_type)[name]
        except ConfigError:
            out[name] = None
    return out


def same_namespaces(a: Instance, b: Instance) -> bool:
    """Whether a forwarding device started against ``a`` still reaches ``b``'s namespaces."""
    return (a.pid, a.netns, a.type, a.status) == (b.pid, b.netns, b.type, b.status)


def same_target(a: Instance, b: Instance) -> bool:
    """Whether a device started against ``a`` is still right for ``b``: NAT devices also
    depend on the NICs (their DNAT target is a NIC's static address)."""
    return same_namespaces(a, b) and a.nics == b.nics


@dataclass(frozen=True)
class DeviceDiff:
    stop: tuple[str, ...]  # running devices to stop, in order
    start: tuple[str, ...]  # devices to start (or restart in place), in order


def diff_devices(old: Mapping[str, ProxyDevice | None], new: Mapping[str, ProxyDevice], *,
                 namespaces_changed: bool = False, nics_changed: bool = False) -> DeviceDiff:
    """Removed proxies stop; added or changed ones start. Every device restarts when the
    instance's namespaces changed (a new PID), NAT devices also when the NICs changed."""
    def changed(name: str) -> bool:
        before, after = old[name], new[name]
        return (before != after or namespaces_changed
                or (nics_changed and (after.nat or (before is not None and before.nat))))

    kept = old.keys() & new.keys()
    return DeviceDiff(stop=tuple(sorted(old.keys() - new.keys())),
                      start=tuple(sorted((new.keys() - kept) | {n for n in kept if changed(n)})))
