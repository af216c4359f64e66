"""``lxdproxy nat show KEY=VALUE... --instance-ip IP [--instance NAME] [--device NAME] [--table T]``.

Prints the nft commands (one ``nft -f`` script) a NAT proxy device would produce, without applying
anything. The instance is modelled as one bridged NIC ``eth0`` with the given static address(es).
LXD's error on stderr and exit 1 for a bad device; exit 2 for bad usage; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from lxdproxy.cli.validate import parse_key_values
from lxdproxy.config.model import InstanceType
from lxdproxy.errors import LxdError
from lxdproxy.instances.model import Instance, Nic
from lxdproxy.nat.rules import DEFAULT_TABLE, build_nat_ruleset
from lxdproxy.nat.target import parse_ip

EXIT_INVALID = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="nat_command", metavar="SUBCOMMAND")
    show = sub.add_parser(
        "show",
        help="print the nft commands a NAT device would produce (nothing is applied)",
        description="Print the nft commands a NAT proxy device would produce; applies nothing.",
    )
    show.add_argument(
        "--instance-ip",
        metavar="IP",
        action="append",
        required=True,
        help="the instance NIC's static address (repeat for one IPv4 and one IPv6)",
    )
    show.add_argument("--instance", default="c1", metavar="NAME", help="instance name (c1)")
    show.add_argument("--project", default="default", metavar="NAME", help="project (default)")
    show.add_argument("--device", default="proxy0", metavar="NAME", help="device name (proxy0)")
    show.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME",
                      help=f"nftables table, family inet ({DEFAULT_TABLE}; LXD uses lxd)")
    show.add_argument(
        "--instance-type",
        choices=[t.value for t in InstanceType],
        default=InstanceType.CONTAINER.value,
    )
    show.add_argument("options", nargs="*", metavar="KEY=VALUE",
                      help="device options, e.g. listen=tcp:192.0.2.1:80 connect=tcp:0.0.0.0:80 "
                      "nat=true")


def _nic(ips: list[str]) -> Nic:
    v4 = v6 = None
    for text in ips:
        ip = parse_ip(text)
        if ip is None:
            raise ValueError(f"--instance-ip: not an IP address {text!r}")
        if ip.version == 4:
            if v4 is not None:
                raise ValueError("--instance-ip: give at most one IPv4 and one IPv6 address")
            v4 = text
        else:
            if v6 is not None:
                raise ValueError("--instance-ip: give at most one IPv4 and one IPv6 address")
            v6 = text
    return Nic(name="eth0", nictype="bridged", ipv4_address=v4, ipv6_address=v6)


def _show(args: argparse.Namespace) -> int:
    try:
        options = parse_key_values(list(args.options))
        nic = _nic(list(args.instance_ip))
    except ValueError as exc:
        print(f"lxdproxy nat show: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from lxdproxy.config import validate_proxy_device

        kind = InstanceType(args.instance_type)
        device = validate_proxy_device(options, kind)
        if not device.nat:
            print("Not a NAT device: set nat=true", file=sys.stderr)
            return EXIT_INVALID
        instance = Instance(name=args.instance, type=kind, nics=(nic,), project=args.project)
        ruleset = build_nat_ruleset(device, instance, args.device, table=args.table)
    except LxdError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:  # a bug of ours must still not print a traceback
        print(f"lxdproxy nat show: internal error: {exc!r}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(ruleset.to_text())
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "nat_command", None) != "show":
        print("usage: lxdproxy nat show KEY=VALUE... --instance-ip IP", file=sys.stderr)
        return EXIT_USAGE
    return _show(args)


__all__ = ["add_arguments", "run"]
