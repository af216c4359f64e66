"""The proxy device's config keys: per-key validators (voluptuous) carrying LXD's exact texts.

Each validator raises ``voluptuous.Invalid`` whose message is LXD's *inner* text; the caller
(validate.py) wraps it as ``Invalid value for device option "<key>": <inner>`` and never lets
voluptuous's own wording through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import voluptuous as vol

from lxdproxy.config.address import parse_address
from lxdproxy.config.gostrconv import GoNumError, go_parse_uint, go_quote
from lxdproxy.errors import ConfigError

# shared/validate.IsBool and shared.IsTrue / IsFalseOrEmpty (compared after Go's ToLower).
BOOL_VALUES = frozenset({"true", "false", "yes", "no", "1", "0", "on", "off"})
TRUE_VALUES = frozenset({"true", "1", "yes", "on"})

BIND_VALUES = ("host", "instance", "guest", "container")  # guest/container: legacy = instance

# LXD's rules map is iterated in Go map order (random). We check in this documented order
# (docs/compatibility.md), then report unknown keys sorted.
KEY_ORDER = (
    "listen",
    "connect",
    "bind",
    "nat",
    "proxy_protocol",
    "uid",
    "gid",
    "mode",
    "security.uid",
    "security.gid",
)
LXD_KEYS = frozenset(KEY_ORDER)

# lxdproxy extensions live under user.* so a config stays valid on a real LXD.
EXT_PROXY_PROTOCOL = "user.lxdproxy.proxy_protocol"
EXT_NAT_WILDCARD = "user.lxdproxy.nat_wildcard"
EXT_NAT_DYNAMIC = "user.lxdproxy.nat_dynamic"
EXT_BIND_UID = "user.lxdproxy.security.bind_uid"
EXT_BIND_GID = "user.lxdproxy.security.bind_gid"
EXT_KEY_ORDER = (EXT_PROXY_PROTOCOL, EXT_NAT_WILDCARD, EXT_NAT_DYNAMIC, EXT_BIND_UID,
                 EXT_BIND_GID)
EXT_PROXY_PROTOCOL_VALUES = ("", "v1", "v2")


def is_true(value: str) -> bool:
    return value.lower() in TRUE_VALUES


def _optional(check: Callable[[str], None]) -> Callable[[str], str]:
    """validate.Optional: the empty string is always fine."""

    def validator(value: str) -> str:
        if value != "":
            check(value)
        return value

    return validator


def _required(check: Callable[[str], None]) -> Callable[[str], str]:
    """validate.Required: the validator also sees the empty string (a missing key)."""

    def validator(value: str) -> str:
        check(value)
        return value

    return validator


def check_address(value: str) -> None:
    try:
        parse_address(value)
    except ConfigError as exc:
        raise vol.Invalid(exc.message) from None


def check_bind(value: str) -> None:
    if value not in BIND_VALUES:
        raise vol.Invalid('Invalid binding side given. Must be "host" or "instance"')


def check_bool(value: str) -> None:
    if value.lower() not in BOOL_VALUES:
        raise vol.Invalid(f"Invalid value for a boolean {go_quote(value)}")


def check_unix_id(value: str) -> None:
    """unixValidUserID: strconv.ParseUint(value, 10, 32)."""
    try:
        go_parse_uint(value, 10, 32)
    except GoNumError:
        raise vol.Invalid("Invalid value for a UNIX ID") from None


def check_octal_mode(value: str) -> None:
    """unixValidOctalFileMode: strconv.ParseUint(value, 8, 32) (``644``, ``0644``, ``7777``)."""
    try:
        go_parse_uint(value, 8, 32)
    except GoNumError:
        raise vol.Invalid("Invalid value for an octal file mode") from None


def check_ext_proxy_protocol(value: str) -> None:
    if value not in EXT_PROXY_PROTOCOL_VALUES:
        raise vol.Invalid('must be "v1" or "v2"')


LXD_VALIDATORS: Mapping[str, Callable[[str], str]] = {
    "listen": _required(check_address),
    "connect": _required(check_address),
    "bind": _optional(check_bind),
    "mode": _optional(check_octal_mode),
    "nat": _optional(check_bool),
    "gid": _optional(check_unix_id),
    "uid": _optional(check_unix_id),
    "security.uid": _optional(check_unix_id),
    "security.gid": _optional(check_unix_id),
    "proxy_protocol": _optional(check_bool),
}

EXT_VALIDATORS: Mapping[str, Callable[[str], str]] = {
    EXT_PROXY_PROTOCOL: _optional(check_ext_proxy_protocol),
    EXT_NAT_WILDCARD: _optional(check_bool),
    EXT_NAT_DYNAMIC: _optional(check_bool),
    EXT_BIND_UID: _optional(check_unix_id),
    EXT_BIND_GID: _optional(check_unix_id),
}


def is_generic_key(key: str) -> bool:
    """Keys the generic device validator lets through for every device type (LXD 5.0.2).

    Newer LXD also passes ``initial.*``; 5.0.2 does not (its binary has no such rule), so
    ``initial.foo`` is an unknown key here, as on the LXD we are compatible with.
    """
    return key == "type" or key.startswith("user.")


def _unknown_key(key: object) -> object:
    if isinstance(key, str) and (key in LXD_KEYS or is_generic_key(key)):
        return key
    raise vol.Invalid("unknown key")


# Unknown keys are rejected through the key validator; the message is replaced by LXD's
# `Invalid device option "<key>"` when translating (validate.py).
LXD_SCHEMA = vol.Schema(
    {
        **{vol.Required(key): validator for key, validator in LXD_VALIDATORS.items()},
        _unknown_key: str,
    },
    extra=vol.PREVENT_EXTRA,
)

EXT_SCHEMA = vol.Schema(dict(EXT_VALIDATORS), extra=vol.ALLOW_EXTRA)

__all__ = [
    "BIND_VALUES",
    "BOOL_VALUES",
    "EXT_BIND_GID",
    "EXT_BIND_UID",
    "EXT_KEY_ORDER",
    "EXT_NAT_DYNAMIC",
    "EXT_NAT_WILDCARD",
    "EXT_PROXY_PROTOCOL",
    "EXT_SCHEMA",
    "KEY_ORDER",
    "LXD_KEYS",
    "LXD_SCHEMA",
    "TRUE_VALUES",
    "is_generic_key",
    "is_true",
]
