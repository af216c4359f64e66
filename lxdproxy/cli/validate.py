"""``lxdproxy validate [--instance-type T] [--name DEV] KEY=VALUE...``.

Prints the normalised device as JSON and exits 0, or prints LXD's error on stderr and exits 1.
Usage errors (an argument without ``=``, a key given twice) exit 2. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lxdproxy.config.model import InstanceType, ProxyAddress, ProxyDevice
from lxdproxy.config.validate import validate_proxy_device
from lxdproxy.errors import ConfigError

EXIT_INVALID = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instance-type",
        choices=[t.value for t in InstanceType],
        default=InstanceType.CONTAINER.value,
        help="type of the instance the device belongs to (default: container)",
    )
    parser.add_argument(
        "--name",
        metavar="DEV",
        help='device name: errors get the instance-layer prefix '
        '`Invalid devices: Device validation failed for "DEV": `',
    )
    parser.add_argument(
        "--forward-address",
        metavar="IP",
        action="append",
        default=[],
        help="listen address of an existing network forward (repeatable)",
    )
    parser.add_argument(
        "options", nargs="*", metavar="KEY=VALUE", help="device options, e.g. listen=tcp:0.0.0.0:80"
    )


def _address_json(addr: ProxyAddress) -> dict[str, Any]:
    return {
        "type": addr.conn_type.value,
        "address": addr.address,
        "ports": list(addr.ports),
        "abstract": addr.abstract,
    }


def device_json(device: ProxyDevice) -> dict[str, Any]:
    """The normalised device, JSON-ready (also handy for other tools and tests)."""
    return {
        "listen": _address_json(device.listen),
        "connect": _address_json(device.connect),
        "bind": device.bind.value,
        "nat": device.nat,
        "nat_wildcard": device.nat_wildcard,
        "nat_dynamic": device.nat_dynamic,
        "proxy_protocol": device.proxy_protocol.name.lower(),
        "uid": device.uid,
        "gid": device.gid,
        "mode": f"{device.mode:04o}",
        "security_uid": device.security_uid,
        "security_gid": device.security_gid,
        "bind_uid": device.bind_uid,
        "bind_gid": device.bind_gid,
        "port_map": [list(pair) for pair in device.port_map],
        "config": dict(device.config),
    }


def parse_key_values(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` command-line items as a device config; ValueError on a malformed or repeated key."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key in options:
            raise ValueError(f"option {key!r} given more than once")
        options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    try:
        options = parse_key_values(list(args.options))
    except ValueError as exc:
        print(f"lxdproxy validate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        device = validate_proxy_device(
            options,
            InstanceType(args.instance_type),
            forward_listen_addresses=list(args.forward_address),
        )
    except ConfigError as exc:
        message = exc.message
        if args.name is not None:
            message = f'Invalid devices: Device validation failed for "{args.name}": {message}'
        print(message, file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:  # a bug of ours must still not print a traceback
        print(f"lxdproxy validate: internal error: {exc!r}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(device_json(device), indent=2))
    return 0


__all__ = ["add_arguments", "device_json", "run"]
