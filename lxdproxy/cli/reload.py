"""`lxdproxy reload`: new data-plane workers take over; the old ones drain
(lxdproxy.cli.daemon_control)."""

from __future__ import annotations

import argparse

from lxdproxy.cli.daemon_control import add_arguments, run_reload

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_reload(args)
