"""`lxdproxy shutdown`: stop the daemon and everything it runs (lxdproxy.cli.daemon_control)."""

from __future__ import annotations

import argparse

from lxdproxy.cli.daemon_control import add_arguments, run_shutdown

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_shutdown(args)
