"""`lxdproxy` command line: parses arguments and hands over to the module that does the work.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Modules are imported lazily so `lxdproxy validate` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("lxdproxy.cli.serve", "run the daemon (API, store, device runtime)"),
    "validate": ("lxdproxy.cli.validate", "validate a proxy device config the way LXD does"),
    "nat": ("lxdproxy.cli.nat_show", "NAT helpers (nat show: the nft commands a device would produce)"),
    "config": ("lxdproxy.cli.config_commands", "lxc-style device commands against a running daemon"),
    "instance": ("lxdproxy.cli.instance_commands", "register local instances with a running daemon"),
    "shutdown": ("lxdproxy.cli.shutdown", "stop the daemon, its workers and every device"),
    "reload": ("lxdproxy.cli.reload", "replace the data-plane workers (the old ones drain)"),
}


def build_parser(available: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lxdproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in available.items():
        help_text = SUBCOMMANDS[name][1]
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)  # type: ignore[attr-defined]
    return parser


def _load_modules() -> dict[str, object]:
    available = {}
    for name, (module_name, _help) in SUBCOMMANDS.items():
        try:
            available[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return available


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = _load_modules()
    parser = build_parser(available)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(available[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
