"""What a PUT or PATCH of an instance asks for, validated, and the device diff it implies.

Pure: no I/O. LXD semantics (lxd/instance_put.go, instance_patch.go):
- PUT replaces ``config`` and the local ``devices`` (absent or ``{}`` deletes every device);
  ``expanded_*``, ``created_at``, ``status``, ``name`` are read-only and ignored (pylxd sends them).
- PATCH merges ``config`` keys and ``devices`` by name (a device replaces the whole device,
  ``null`` deletes it).
- Proxy devices have no live-updatable keys: any change is stop + start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lxdproxy.api.request_json import device_map, string_map
from lxdproxy.config.gostrconv import go_quote
from lxdproxy.config.model import InstanceType, ProxyDevice
from lxdproxy.config.names import check_device_name
from lxdproxy.errors import ConfigError, NotSupportedError

Devices = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Desired:
    """The instance's writable state after the request (not yet validated)."""

    config: dict[str, str]
    devices: Devices
    description: str


def from_put(body: Mapping[str, Any]) -> Desired:
    devices = device_map(body.get("devices"))
    description = body.get("description", "")
    return Desired(
        config=string_map(body.get("config"), "config"),
        devices={k: v for k, v in devices.items() if v is not None},
        description=description if isinstance(description, str) else "",
    )


def from_patch(record: Mapping[str, Any], body: Mapping[str, Any]) -> Desired:
    config = dict(record.get("config", {}))
    config.update(string_map(body.get("config"), "config"))
    devices: Devices = {k: dict(v) for k, v in record.get("devices", {}).items()}
    for name, dev in device_map(body.get("devices"), allow_null_devices=True).items():
        if dev is None:
            devices.pop(name, None)
        else:
            devices[name] = dev
    description = body.get("description", record.get("description", ""))
    return Desired(config=config, devices=devices,
                   description=description if isinstance(description, str) else "")


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
    try:
        from lxdproxy.config import validate_proxy_device  # type: ignore[attr-defined]
    except ImportError:
        validate_proxy_device = None
    proxies: dict[str, ProxyDevice] = {}
    for name in sorted(devices):
        dev = devices[name]
        check_device_name(name)
        if not dev.get("type"):
            raise _validation_failed(name, f"Missing device type for device {go_quote(name)}")
        if dev["type"] != "proxy":
            continue
        if validate_proxy_device is None:
            raise NotSupportedError("Proxy device validation is not available in this build")
        try:
            proxies[name] = validate_proxy_device(
                dev, instance_type, forward_listen_addresses=forward_listen_addresses
            )
        except ConfigError as exc:
            raise _validation_failed(name, exc.message) from None
    return proxies


def nics_of(devices: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    return {k: dict(v) for k, v in devices.items() if v.get("type") == "nic"}


@dataclass(frozen=True)
class DevicePlan:
    stop: tuple[str, ...]  # running devices to stop, in order
    start: tuple[str, ...]  # devices to start, in order


def plan_changes(old: Mapping[str, ProxyDevice], new: Mapping[str, ProxyDevice], *,
                 nics_changed: bool = False) -> DevicePlan:
    """Removed or changed proxies stop, added or changed ones start. NAT devices also restart
    when the NICs changed, since their DNAT target is the NIC's static address."""
    changed = {n for n in old.keys() & new.keys()
               if old[n] != new[n] or (nics_changed and (old[n].nat or new[n].nat))}
    stop = sorted((old.keys() - new.keys()) | changed)
    start = sorted((new.keys() - old.keys()) | changed)
    return DevicePlan(stop=tuple(stop), start=tuple(start))
