"""Command-line entry points: `lxdproxy serve|validate|nat show|config|instance`."""

from lxdproxy.cli.main import main

__all__ = ["main"]
