"""Names and integers as LXD 5.0.2 accepts them (pure: strings in, ConfigError out).

- Instance names: ``instance.ValidName`` -> ``shared/validate.IsHostname``. Go's ``$`` matches
  only at the end of the text, so the pattern is applied with ``fullmatch`` here (Python's
  ``$`` also matches before a trailing newline: ``"x\\n"`` slipped through, issue 12).
- Device names: ``instance/drivers.validDevices`` (at most 64 bytes) then
  ``shared/validate.IsDeviceName``. LXD allows ``/`` and ``:`` in device names; ``.``/``..``
  (a leading full stop), control characters and anything outside the ASCII set are refused.
- Integers from user input: ASCII digits only (``str.isdigit`` and ``int`` also take
  ``"١٢٣"``, ``"²"``, ``" 1"``, ``"1_0"``).

Lengths are counted in UTF-8 bytes, as Go's ``len`` counts them.
"""

from __future__ import annotations

import re

from lxdproxy.config.gostrconv import go_quote
from lxdproxy.errors import ConfigError

SNAPSHOT_DELIMITER = "/"
HOSTNAME_MAX = 63
DEVICE_NAME_MAX = 63  # IsDeviceName
DEVICE_NAME_HARD_MAX = 64  # validDevices' own check, made before IsDeviceName's

_HOSTNAME_CHARS = re.compile(r"[\-a-zA-Z0-9]+")
_DEVICE_NAME_CHARS = re.compile(r"[/.\-:_a-zA-Z0-9]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")


def _go_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def hostname_error(name: str) -> str | None:
    """``validate.IsHostname``'s message for ``name``, or None when it is a valid hostname."""
    if not 1 <= _go_len(name) <= HOSTNAME_MAX:
        return "Name must be 1-63 characters long"
    if name.startswith("-"):
        return 'Name must not start with "-" character'
    if name.endswith("-"):
        return 'Name must not end with "-" character'
    if name[0] in "0123456789":  # strconv.Atoi(string(name[0])) succeeds
        return "Name must not start with a number"
    if not _HOSTNAME_CHARS.fullmatch(name):
        return "Name can only contain alphanumeric and hyphen characters"
    return None


def check_instance_name(name: str) -> str:
    """``instance.ValidName(name, false)``: returns ``name`` or raises LXD's ConfigError."""
    if SNAPSHOT_DELIMITER in name:
        raise ConfigError(f"The character {go_quote(SNAPSHOT_DELIMITER)} is reserved for snapshots")
    error = hostname_error(name)
    if error is not None:
        raise ConfigError(f"Invalid instance name: {error}")
    return name


def device_name_error(name: str) -> str | None:
    """``validate.IsDeviceName``'s message for ``name``, or None when LXD accepts it."""
    if not 1 <= _go_len(name) <= DEVICE_NAME_MAX:
        return "Name must be 1-63 characters long"
    if name.startswith("."):
        return 'Name must not start with "." character'
    if not _DEVICE_NAME_CHARS.fullmatch(name):
        return ("Name can only contain alphanumeric, forward slash, hyphen, colon, underscore "
                "and full stop characters")
    return None


def check_device_name(name: str) -> str:
    """The name checks LXD makes on every device of a write, with its full message
    (``Invalid devices: ...``) as the API shows it."""
    if _go_len(name) > DEVICE_NAME_HARD_MAX:
        raise ConfigError("Invalid devices: The maximum device name length is 64 characters")
    error = device_name_error(name)
    if error is not None:
        raise ConfigError(f"Invalid devices: Device validation failed for {go_quote(name)}: "
                          f"{error}")
    return name


def is_ascii_digits(text: str) -> bool:
    return _ASCII_DIGITS.fullmatch(text) is not None


def parse_ascii_uint(text: str, max_digits: int = 19) -> int | None:
    """The value of a string of ASCII digits, None for anything else (signs, spaces,
    underscores, non-ASCII digits, more than ``max_digits`` digits: Python's ``int`` refuses
    over 4,300 with a ValueError, and nothing we parse needs more than an int64)."""
    if len(text) > max_digits or not is_ascii_digits(text):
        return None
    return int(text)
