"""``validate_proxy_device``: a raw proxy device config -> ``ProxyDevice``, or LXD's exact error.

Order (first failure wins; see docs/compatibility.md):
 1. shape: a mapping of str -> str (our own words: LXD's API can't even express anything else);
 2. instance type, then the ``type`` key: ``Unsupported device type``;
 3. LXD's per-key checks, in ``keys.KEY_ORDER``, then unknown keys sorted (LXD: random order);
 4. LXD's cross-field rules (lxd_rules.py);
 5. lxdproxy's extension keys (``user.lxdproxy.*``);
 6. configs LXD accepts but that can never start (start_checks.py);
 7. extension cross-field rules (PROXY header version, nat_dynamic, bind ids: ext_rules.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import voluptuous as vol

from lxdproxy.config.address import parse_address
from lxdproxy.config.ext_rules import check_bind_ids, check_nat_dynamic
from lxdproxy.config.gostrconv import go_parse_uint, go_quote
from lxdproxy.config.keys import (
    EXT_BIND_GID,
    EXT_BIND_UID,
    EXT_KEY_ORDER,
    EXT_NAT_DYNAMIC,
    EXT_NAT_WILDCARD,
    EXT_PROXY_PROTOCOL,
    EXT_SCHEMA,
    KEY_ORDER,
    LXD_KEYS,
    LXD_SCHEMA,
    is_true,
)
from lxdproxy.config.lxd_rules import check_lxd_cross_fields
from lxdproxy.config.model import (
    BindSide,
    ConnType,
    InstanceType,
    ProxyAddress,
    ProxyDevice,
    ProxyProtocol,
)
from lxdproxy.config.port_map import map_ports
from lxdproxy.config.start_checks import (
    check_address_startable,
    check_nat_startable,
    check_pair_startable,
)
from lxdproxy.errors import ConfigError

UNSUPPORTED_DEVICE_TYPE = "Unsupported device type"


def _snapshot(config: object) -> dict[str, str]:
    """Copy the input once (a Mapping may be lazy or hostile) and insist on str -> str."""
    if not isinstance(config, Mapping):
        raise ConfigError("Device configuration must be a mapping of option names to strings")
    try:
        items = list(config.items())
    except Exception as exc:
        raise ConfigError(f"Device configuration could not be read: {exc!r}") from None
    raw: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str):
            raise ConfigError(f"Invalid device option {key!r}: option names must be strings")
        if not isinstance(value, str):
            raise ConfigError(
                f"Invalid value for device option {go_quote(key)}: "
                f"must be a string, not {type(value).__name__}"
            )
        raw[key] = value
    return raw


def _instance_type(instance_type: object) -> InstanceType:
    if isinstance(instance_type, InstanceType):
        return instance_type
    for candidate in InstanceType:
        if instance_type == candidate.value:
            return candidate
    raise ConfigError(UNSUPPORTED_DEVICE_TYPE)


def _first_schema_error(
    schema: vol.Schema, data: dict[str, str], order: tuple[str, ...]
) -> ConfigError | None:
    """Run a voluptuous schema; turn its errors into the one LXD would report, in our order."""
    try:
        schema(data)
    except vol.MultipleInvalid as exc:
        errors = list(exc.errors)
    except vol.Invalid as exc:
        errors = [exc]
    else:
        return None
    by_key: dict[str, vol.Invalid] = {}
    for error in errors:
        key = error.path[0] if error.path else None
        if isinstance(key, str) and key not in by_key:
            by_key[key] = error
    for key in order:
        if key in by_key:
            return ConfigError(
                f"Invalid value for device option {go_quote(key)}: {by_key[key].error_message}"
            )
    # Everything else is a key no rule knows: LXD's message, never voluptuous's wording.
    unknown = sorted(key for key in by_key if key not in order)
    if unknown:
        return ConfigError(f"Invalid device option {go_quote(unknown[0])}")
    return ConfigError("Invalid device configuration")  # unreachable: every error has a path


def _check_keys(raw: dict[str, str]) -> None:
    # A missing key reads as "" in Go's map, so listen/connect report `Unknown protocol type ""`.
    data = {key: "" for key in LXD_KEYS} | raw
    error = _first_schema_error(LXD_SCHEMA, data, KEY_ORDER)
    if error is not None:
        raise error


def _proxy_protocol(raw: Mapping[str, str], connect: ProxyAddress, nat: bool) -> ProxyProtocol:
    """proxy_protocol (any true value, not only "true": LXD quirk §9.1) and its v2 extension."""
    ext = raw.get(EXT_PROXY_PROTOCOL, "")
    if ext and nat:
        raise ConfigError("The PROXY header can only be sent in non-nat mode")
    if ext == "v2":
        return ProxyProtocol.V2
    if ext == "v1":
        if connect.conn_type is ConnType.UDP:
            raise ConfigError('PROXY protocol v1 cannot be sent to udp servers (use "v2")')
        return ProxyProtocol.V1
    return ProxyProtocol.V1 if is_true(raw.get("proxy_protocol", "")) else ProxyProtocol.NONE


def _port_map(listen: ProxyAddress, connect: ProxyAddress) -> tuple[tuple[int, int], ...]:
    """Spec §2.1: N:1 to the single connect port, N:N by position. Empty if a side is unix."""
    if listen.conn_type is ConnType.UNIX or connect.conn_type is ConnType.UNIX:
        return ()
    return map_ports(listen.ports, connect.ports)  # start_checks refused counts it cannot map


def _optional_id(raw: Mapping[str, str], key: str) -> int | None:
    value = raw.get(key, "")
    return go_parse_uint(value, 10, 32) if value else None


def validate_proxy_device(
    config: Mapping[str, str],
    instance_type: InstanceType = InstanceType.CONTAINER,
    *,
    forward_listen_addresses: Iterable[object] = (),
    project_has_networks_feature: bool = False,
) -> ProxyDevice:
    """Validate a proxy device the way LXD 5.0.2 does (plus the "better than LXD" checks).

    ``forward_listen_addresses``: listen IPs of existing network forwards (compared as IPs).
    ``project_has_networks_feature``: the instance's project is not ``default`` and has
    ``features.networks=true`` (then NAT mode is refused, as in LXD).
    Raises ``ConfigError`` with LXD's exact message; no other exception escapes.
    """
    raw = _snapshot(config)
    kind = _instance_type(instance_type)
    if raw.get("type", "proxy") != "proxy":
        raise ConfigError(UNSUPPORTED_DEVICE_TYPE)
    _check_keys(raw)
    listen = parse_address(raw.get("listen", ""))
    connect = parse_address(raw.get("connect", ""))
    check_lxd_cross_fields(
        raw,
        listen,
        connect,
        kind,
        forward_listen_addresses,
        project_has_networks_feature=project_has_networks_feature,
    )
    error = _first_schema_error(EXT_SCHEMA, raw, EXT_KEY_ORDER)
    if error is not None:
        raise error
    nat = is_true(raw.get("nat", ""))
    check_address_startable("listen", listen)
    check_address_startable("connect", connect)
    check_pair_startable(listen, connect, nat)
    if nat:
        check_nat_startable(raw, listen, connect)
    protocol = _proxy_protocol(raw, connect, nat)
    check_nat_dynamic(raw, connect, nat)
    check_bind_ids(raw, nat)
    mode = raw.get("mode", "")
    return ProxyDevice(
        listen=listen,
        connect=connect,
        bind=BindSide.HOST if raw.get("bind", "") in ("", "host") else BindSide.INSTANCE,
        nat=nat,
        proxy_protocol=protocol,
        uid=_optional_id(raw, "uid"),
        gid=_optional_id(raw, "gid"),
        mode=go_parse_uint(mode, 8, 32) if mode else 0o644,
        security_uid=_optional_id(raw, "security.uid") or 0,
        security_gid=_optional_id(raw, "security.gid") or 0,
        port_map=_port_map(listen, connect),
        nat_wildcard=is_true(raw.get(EXT_NAT_WILDCARD, "")),
        nat_dynamic=is_true(raw.get(EXT_NAT_DYNAMIC, "")),
        bind_uid=_optional_id(raw, EXT_BIND_UID),
        bind_gid=_optional_id(raw, EXT_BIND_GID),
        config=tuple(sorted(raw.items())),
    )


__all__ = ["UNSUPPORTED_DEVICE_TYPE", "validate_proxy_device"]
