"""`lxdproxy shutdown` and `lxdproxy reload`: tell a running daemon, over its unix socket.

``shutdown`` (``PUT /internal/shutdown``, as ``lxd shutdown`` does) stops every device, the
workers and the control plane, and waits until the daemon is gone. ``reload``
(``PUT /internal/reload``) replaces the data plane's workers with ones running the code now on
disk; the old workers drain. A plain SIGTERM, by contrast, only detaches the control plane.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from lxdproxy.cli.api_client import ApiError, DaemonClient, default_socket


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=None,
                        help="daemon unix socket (default $LXDPROXY_SOCKET or "
                             "/var/lib/lxdproxy/unix.socket)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the daemon (default 60)")


def _gone(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        return True
    finally:
        sock.close()
    return False


def _run(args: argparse.Namespace, action: str) -> int:
    path = args.socket or default_socket()
    client = DaemonClient(path, timeout=args.timeout)
    try:
        client.request("PUT", f"/internal/{action}")
    except ApiError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if action == "shutdown":
        deadline = time.monotonic() + args.timeout
        while not _gone(path):
            if time.monotonic() > deadline:
                print(f"Error: the daemon did not stop within {args.timeout:g} s",
                      file=sys.stderr)
                return 1
            time.sleep(0.05)
    return 0


def run_shutdown(args: argparse.Namespace) -> int:
    return _run(args, "shutdown")


def run_reload(args: argparse.Namespace) -> int:
    return _run(args, "reload")
