"""`lxdproxy instance add|list|remove`: register processes or netns as instances (local backend).

``add`` is ``POST /1.0/instances`` with ``source: {"type": "none"}`` and the anchor in config
(``user.lxdproxy.pid`` or ``user.lxdproxy.netns``); NICs become ``type: nic`` devices so NAT
devices can find the instance's static address, as LXD reads it from ``ipv4.address``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lxdproxy.cli.api_client import ApiError, DaemonClient, path_segment
from lxdproxy.cli.config_commands import CliError, socket_option

PID_KEY = "user.lxdproxy.pid"
NETNS_KEY = "user.lxdproxy.netns"


def parse_nic(spec: str) -> tuple[str, dict[str, str]]:
    """``eth0,ipv4.address=198.18.0.2,nictype=bridged`` -> ("eth0", {...}).

    A NIC with neither ``network`` nor ``nictype`` is taken as bridged (the usual LXD NIC, and
    the only kind LXD's NAT mode accepts).
    """
    name, *pairs = spec.split(",")
    name = name.strip()
    if not name or "=" in name:
        raise CliError(f'Invalid --nic "{spec}": expected NAME,key=value,...')
    device = {"type": "nic"}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f'Invalid --nic "{spec}": No value found in "{pair}"')
        device[key.strip()] = value.strip()
    if "network" not in device and "nictype" not in device:
        device["nictype"] = "bridged"
    return name, device


def build_create_body(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, str] = {}
    if args.pid is not None:
        config[PID_KEY] = str(args.pid)
    if args.netns is not None:
        config[NETNS_KEY] = args.netns
    devices: dict[str, dict[str, str]] = {}
    for spec in args.nic or ():
        name, device = parse_nic(spec)
        if name in devices:
            raise CliError(f'Duplicate --nic "{name}"')
        devices[name] = device
    return {"name": args.name, "type": args.type, "source": {"type": "none"},
            "config": config, "devices": devices}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = socket_option(parser)
    sub = parser.add_subparsers(dest="instance_command", metavar="COMMAND")

    p = sub.add_parser("add", parents=[common], help="register an instance (a PID or a netns)")
    p.add_argument("name")
    anchor = p.add_mutually_exclusive_group(required=True)
    anchor.add_argument("--pid", type=int, help="init process: its net/mount/user namespaces")
    anchor.add_argument("--netns", metavar="NAME_OR_PATH",
                        help="a named netns (/run/netns/NAME) or an nsfs path; net only")
    p.add_argument("--type", choices=["container", "virtual-machine"], default="container")
    p.add_argument("--nic", action="append", metavar="NAME,key=value,...",
                   help="a NIC, e.g. eth0,ipv4.address=198.18.0.2 (repeatable)")
    sub.add_parser("list", aliases=["ls"], parents=[common], help="list instances")
    p = sub.add_parser("remove", aliases=["rm", "delete"], parents=[common],
                       help="unregister instances (their proxy devices stop)")
    p.add_argument("names", nargs="+", metavar="name")


def _anchor(inst: dict[str, Any]) -> str:
    config = inst.get("config") or {}
    if config.get(PID_KEY):
        return f"pid {config[PID_KEY]}"
    if config.get(NETNS_KEY):
        return f"netns {config[NETNS_KEY]}"
    return ""


def _addresses(inst: dict[str, Any]) -> str:
    found = []
    for name, dev in sorted((inst.get("expanded_devices") or {}).items()):
        if dev.get("type") != "nic":
            continue
        for key in ("ipv4.address", "ipv6.address"):
            if dev.get(key):
                found.append(f"{dev[key]} ({name})")
    return ", ".join(found)


def _list(client: DaemonClient) -> None:
    instances = client.get("/1.0/instances?recursion=1").metadata or []
    rows = [("NAME", "TYPE", "STATUS", "NAMESPACES", "ADDRESSES", "PROXIES")]
    for inst in sorted(instances, key=lambda i: i.get("name", "")):
        proxies = sum(1 for d in (inst.get("devices") or {}).values() if d.get("type") == "proxy")
        rows.append((inst.get("name", ""), inst.get("type", ""), inst.get("status", ""),
                     _anchor(inst), _addresses(inst), str(proxies)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    try:
        client = DaemonClient(args.socket)
        cmd = args.instance_command
        if cmd == "add":
            client.write("POST", "/1.0/instances", build_create_body(args))
            print(f"Instance {args.name} added")
        elif cmd in ("list", "ls"):
            _list(client)
        elif cmd in ("remove", "rm", "delete"):
            for name in args.names:
                client.write("DELETE", f"/1.0/instances/{path_segment(name)}")
                print(f"Instance {name} removed")
        else:
            raise CliError("Missing command (add, list, remove)")
        return 0
    except (ApiError, CliError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback
        print(f"Error: {getattr(exc, 'message', None) or exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
