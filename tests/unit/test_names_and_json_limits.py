"""LXD 5.0.2's name rules (shared/validate IsHostname, IsDeviceName, validDevices) and the JSON
limits: every hostile input of issue 12 is a ConfigError/400 with LXD's wording, never a 500."""

from __future__ import annotations

import pytest

from lxdproxy.api.request_json import MAX_DEPTH, decode_object
from lxdproxy.config.names import check_device_name, check_instance_name, parse_ascii_uint
from lxdproxy.errors import ConfigError, LxdError
from lxdproxy.instances.local import parse_anchor, validate_instance_name
from lxdproxy.manager.writes import validate_devices

PROXY = {"type": "proxy", "listen": "tcp:127.0.0.1:80", "connect": "tcp:127.0.0.1:81"}


@pytest.mark.parametrize(("name", "message"), [
    ("x\n", "Invalid instance name: Name can only contain alphanumeric and hyphen characters"),
    ("a\nb", "Invalid instance name: Name can only contain alphanumeric and hyphen characters"),
    ("c_1", "Invalid instance name: Name can only contain alphanumeric and hyphen characters"),
    ("ünï", "Invalid instance name: Name can only contain alphanumeric and hyphen characters"),
    ("1c", "Invalid instance name: Name must not start with a number"),
    ("-c", 'Invalid instance name: Name must not start with "-" character'),
    ("c-", 'Invalid instance name: Name must not end with "-" character'),
    ("c" * 64, "Invalid instance name: Name must be 1-63 characters long"),
    ("é" * 32, "Invalid instance name: Name must be 1-63 characters long"),  # 64 bytes
    ("a/b", 'The character "/" is reserved for snapshots'),
])
def test_instance_names_refused_as_lxd_does(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_instance_name(name)
    assert err.value.message == message


@pytest.mark.parametrize("name", ["c", "c1", "web-01", "A" * 63, "x-y-z"])
def test_instance_names_accepted(name: str) -> None:
    assert check_instance_name(name) == name


@pytest.mark.parametrize(("name", "message"), [
    ("", 'Invalid devices: Device validation failed for "": Name must be 1-63 characters long'),
    (".", 'Invalid devices: Device validation failed for ".": Name must not start with "." '
          "character"),
    ("..", 'Invalid devices: Device validation failed for "..": Name must not start with "." '
           "character"),
    ("a\nb", 'Invalid devices: Device validation failed for "a\\nb": Name can only contain '
             "alphanumeric, forward slash, hyphen, colon, underscore and full stop characters"),
    ("a b", 'Invalid devices: Device validation failed for "a b": Name can only contain '
            "alphanumeric, forward slash, hyphen, colon, underscore and full stop characters"),
    ("x" * 64, f'Invalid devices: Device validation failed for "{"x" * 64}": Name must be 1-63 '
               "characters long"),
    ("x" * 65, "Invalid devices: The maximum device name length is 64 characters"),
    ("x" * 10_000, "Invalid devices: The maximum device name length is 64 characters"),
])
def test_device_names_refused_as_lxd_does(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_devices({name: PROXY})
    assert err.value.message == message


@pytest.mark.parametrize("name", ["web", "eth0", "a/b", "a:b", "a.b", "a_b-c", "x" * 63])
def test_device_names_lxd_accepts(name: str) -> None:
    # LXD 5.0.2 allows "/" and ":" (IsDeviceName); nothing here builds a path from the name.
    assert check_device_name(name) == name


@pytest.mark.parametrize("text", ["١٢٣", "²", " 12", "12 ", "+12", "-1", "1_0", "", "1" * 20,
                                  "1" * 5000])
def test_integers_are_ascii_digits_only(text: str) -> None:
    assert parse_ascii_uint(text) is None


def test_pid_in_non_ascii_digits_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_anchor({"user.lxdproxy.pid": "١"})
    assert err.value.message == 'Invalid value for config "user.lxdproxy.pid": "١" is not a process ID'
    with pytest.raises(ConfigError):
        parse_anchor({"user.lxdproxy.pid": "9" * 5000})


@pytest.mark.parametrize(("body", "message"), [
    (b'{"name": NaN}', "invalid character 'N' looking for beginning of value"),
    (b'{"name": Infinity}', "invalid character 'I' looking for beginning of value"),
    (b'{"name": -Infinity}', "invalid character 'I' in numeric literal"),
    (b'{"name": "NaN", "x": [NaN]}', "invalid character 'N' looking for beginning of value"),
    (b"[" * 100_000 + b"]" * 100_000, "exceeded max depth"),
    (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "exceeded max depth"),
    (b'{"n": ' + b"9" * 5000 + b"}",
     "json: cannot unmarshal number 9999999999999999... (5000 characters) into Go value of "
     "type float64"),
    (b'{"n": 0.' + b"5" * 5000 + b"}",
     "json: cannot unmarshal number 0.55555555555555... (5002 characters) into Go value of "
     "type float64"),
])
def test_hostile_json_is_a_400(body: bytes, message: str) -> None:
    with pytest.raises(LxdError) as err:
        decode_object(body)
    assert (err.value.status, err.value.message) == (400, message)


def test_deep_but_bounded_json_is_fine() -> None:
    body = b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert "a" in decode_object(body)
