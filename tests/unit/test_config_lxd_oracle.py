"""Differential test: our address parser against the real LXD 5.0.2 parser (``lxd forkproxy``).

``lxd forkproxy`` parses both addresses with LXD's own ProxyParseAddr (Go 1.19) before doing
anything else and prints ``Error: <err>`` on failure. We run it in a throwaway network namespace
(``unshare --net``, gone when the process exits) with a connect address that always fails, so it
never listens anywhere: its first error is either about our listen vector or the sentinel.
Skipped unless root with the Debian ``lxd`` package installed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

from lxdproxy.config import parse_address
from lxdproxy.errors import ConfigError

LXD = "/usr/bin/lxd"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(LXD) or shutil.which("unshare") is None,
    reason="needs root, unshare and LXD 5.0.2's /usr/bin/lxd",
)

TRICKY = [
    "tcp:127.0.0.1:2000,2002,3000-3003",
    "tcp:[fd39:2561:7238:91b5::0]:2000",
    "tcp:fd39:2561:7238:91b5::0:2000",
    "tcp:localhost:4321",
    "tcp",
    "tcp:",
    "TCP:1.2.3.4:80",
    "tcp:1.2.3.4",
    "tcp:1.2.3.4:",
    "tcp:1.2.3.4:80,,81",
    "tcp:1.2.3.4:-5",
    "tcp:1.2.3.4:80-80",
    "tcp:1.2.3.4:90-80",
    "tcp:1.2.3.4:1-2-3",
    "tcp:1.2.3.4:x-1-2",
    "tcp::80",
    "tcp:[]:80",
    "tcp:[1.2.3.4]:80",
    "tcp:1.2.3.4:+80",
    "tcp:1.2.3.4:+",
    "tcp:1.2.3.4:9223372036854775808",
    "tcp:1.2.3.4:99999999999999999999x",
    "tcp:[::1]",
    "tcp:[::1]x:80",
    "tcp:[::1]:80:90",
    "tcp:[::1:80",
    "tcp:1[.2.3.4:80",
    "tcp:1].2.3.4:80",
    "tcp:[::1]]:80",
    "tcp:[1.2.3.4]:8]0",
    "tcp:[fe80::1%eth0]:80",
    "tcp:01.2.3.4:80",
    "tcp:[::ffff:1.2.3.4]:80",
    "tcp:[::ffff:01.2.3.4]:80",
    "tcp:[::1.2.3.4]:80",
    "tcp:[1:2:3:4:5:1.2.3.4]:80",
    "tcp:[1:2:3:4:5:6:7::]:80",
    "tcp:[1:2:3:4:5:6:7:8::]:80",
    "tcp:[000001::]:80",
    "tcp:[10000::]:80",
    "tcp:[é]:80",
    "tcp:[a\tb]:80",
    "tcp:1.2.3.4:٣",
    "tcp:1.2.3.4:8_0",
    "udp:[::]:53",
    "udp:1.2.3:53",
    "bla:blub",
    "",
]


def _random_vectors(count: int) -> list[str]:
    rng = random.Random(5002)
    alphabet = "0123456789abcdefABCDEF:.[]%,-+ x"
    vectors = []
    for _ in range(count):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 18)))
        vectors.append(f"{rng.choice(['tcp', 'udp'])}:{body}")
    return vectors


def _sentinel(listen: str) -> tuple[str, str]:
    """A connect address that always fails to parse, and its error (udp->udp for udp listens,
    or forkproxy's C constructor refuses the pair before parsing anything)."""
    if listen.startswith("udp:"):
        return "udp:bla", "address bla: missing port in address"
    return "bla:", 'Unknown protocol type "bla"'


def _lxd_listen_error(listen: str) -> str:
    """LXD's first error line for this listen address."""
    script = f'exec {LXD} forkproxy -- $$ -1 "$1" $$ -1 "$2" "" "" 0644 "" "" ""'
    result = subprocess.run(
        ["unshare", "--net", "--fork", "sh", "-c", script, "sh", listen, _sentinel(listen)[0]],
        capture_output=True,
        timeout=20,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    lines = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    assert lines, (listen, result)
    return lines[0].removeprefix("Error: ")


def _our_error(listen: str) -> str:
    try:
        parse_address(listen)
    except ConfigError as exc:
        return exc.message
    return _sentinel(listen)[1]


@pytest.mark.parametrize("listen", TRICKY + _random_vectors(60))
def test_parser_matches_lxd(listen: str) -> None:
    assert _our_error(listen) == _lxd_listen_error(listen)
