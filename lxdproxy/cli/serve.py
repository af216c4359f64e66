"""``lxdproxy serve``: parse flags into a DaemonConfig and run the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lxdproxy.daemon import DEFAULT_STATE_DIR, DaemonConfig, DaemonError, parse_host_port
from lxdproxy.daemon import run as run_daemon
from lxdproxy.errors import LxdError
from lxdproxy.forward.stream_relay import STREAM_MODES, RelayMode
from lxdproxy.log_format import EscapingFormatter
from lxdproxy.nat.rules import DEFAULT_TABLE
from lxdproxy.store import StoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--socket", type=Path, default=None,
                        help="API unix socket (default <state-dir>/unix.socket, mode 0660)")
    parser.add_argument("--https", metavar="HOST:PORT", default=None,
                        help="also serve the API over HTTPS with client-certificate trust")
    parser.add_argument("--lxd", metavar="SOCKET_OR_URL", default=None,
                        help="take instances from a real LXD instead of the local store")
    parser.add_argument("--nft-table", default=DEFAULT_TABLE,
                        help="nftables table for NAT devices (default lxdproxy; 'lxd' = LXD's)")
    parser.add_argument("--nat-repair-interval", type=float, default=10.0, metavar="SECONDS",
                        help="how often to re-apply NAT rules that vanished (default 10)")
    parser.add_argument("--workers", type=_worker_count, default=None, metavar="N",
                        help="data-plane worker processes (default: one per CPU; 0 = forward "
                             "in the daemon itself, and every restart is an outage)")
    parser.add_argument("--drain-timeout", type=float, default=None, metavar="SECONDS",
                        help="on reload, how long old workers may finish their connections "
                             "(default: until they close)")
    parser.add_argument("--udp-spread", action=argparse.BooleanOptionalAction, default=True,
                        help="spread each UDP device's sessions over the workers by client "
                             "address (an SO_REUSEPORT group with an eBPF selector; default "
                             "on). Off, or where bpf(2) is refused, one worker reads each "
                             "UDP device")
    parser.add_argument("--relay", choices=[m.value for m in STREAM_MODES],
                        default=RelayMode.COPY.value,
                        help="how a stream connection's bytes move: copy (recv/send through a "
                             "1 MiB buffer; default) or splice (zero-copy through a pipe). On the "
                             "loopback paths of an LXD host copies moved a single stream faster "
                             "for no more CPU (benchmarks/analysis.md)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the worker count cannot be negative")
    return value


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("lxdproxy: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])
    try:
        config = DaemonConfig(
            state_dir=args.state_dir.absolute(),
            socket_path=args.socket.absolute() if args.socket else None,
            https=parse_host_port(args.https) if args.https else None,
            lxd=args.lxd,
            nft_table=args.nft_table,
            nat_repair_interval=args.nat_repair_interval,
            workers=args.workers,
            drain_timeout=args.drain_timeout,
            udp_spread=args.udp_spread,
            relay=RelayMode(args.relay),
            log_level=args.log_level,
        )
        run_daemon(config)
    except (DaemonError, StoreError, LxdError, OSError) as exc:
        print(f"lxdproxy: error: {exc}", file=sys.stderr)
        return 1
    return 0
