"""LXD checklist part A (spec §7 A1-A8): validation through the real ``lxc`` client, with LXD's
exact ``Error: ...`` lines, and the device lifecycle around an invalid stored config."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.compat.checklist_support import Daemon, P, checklist_daemon, echo_server, refused, tcp_echo

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

__all__ = ["checklist_daemon"]

PREFIX = 'Error: Invalid devices: Device validation failed for "proxyDev": '

# (A-step, device keys, LXD 5.0.2's exact output) — the messages are spec §1.1 steps 1 and 8.
REJECTED = [
    ("A1", [f"listen=tcp:127.0.0.1:{P}", "connect=tcp:localhost:4321", "bind=host"],
     'Invalid value for device option "connect": Not an IP address "localhost"'),
    ("A2", [f"listen=tcp:0.0.0.0:{P}", "connect=tcp:0.0.0.0:4321", "nat=true"],
     'Cannot listen on wildcard address "0.0.0.0" when in nat mode'),
    ("A3", [f"listen=tcp:[::]:{P}", "connect=tcp:0.0.0.0:4321", "nat=true"],
     'Cannot listen on wildcard address "::" when in nat mode'),
    ("A4", [f"listen=tcp:127.0.0.1:{P}", "connect=tcp:[::]:4321", "nat=true"],
     "Cannot mix IP versions between listen and connect in nat mode"),
    ("A5", [f"listen=tcp:[::1]:{P}", "connect=tcp:0.0.0.0:4321", "nat=true"],
     "Cannot mix IP versions between listen and connect in nat mode"),
    ("A6", [f"listen=tcp:[::1]:{P}", "connect=tcp:[::]:4321", "nat=true", "proxy_protocol=true"],
     "The PROXY header can only be sent to tcp servers in non-nat mode"),
]


def test_a1_to_a6_rejected_with_lxd_errors(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    d.register("proxyTester", inst)
    before = d.lxc("config", "show", "proxyTester").stdout
    for step, keys, message in REJECTED:
        err = d.lxc_error("config", "device", "add", "proxyTester", "proxyDev", "proxy", *keys)
        assert err == PREFIX + message, step
    # nothing was stored or started by any of the rejected adds
    assert d.lxc("config", "show", "proxyTester").stdout == before
    assert refused(lab, P)


def test_a1_through_pylxd_style_put_and_set(lab: Any, checklist_daemon: Daemon) -> None:
    """The same validation on ``device set`` (a PUT of the whole instance): LXD's message, and
    the running device is untouched."""
    d = checklist_daemon
    inst = lab.add_instance()
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    d.register("proxyTester", inst)
    d.add("proxyTester", "proxyDev", f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321",
          "bind=host")
    err = d.lxc_error("config", "device", "set", "proxyTester", "proxyDev",
                      "connect=tcp:localhost:4321")
    assert err == PREFIX + 'Invalid value for device option "connect": Not an IP address "localhost"'
    assert d.lxc("config", "device", "get", "proxyTester", "proxyDev", "connect").stdout.strip() \
        == "tcp:127.0.0.1:4321"
    assert tcp_echo(lab, P) == b"checklist\n"


def test_a7_a8_remove_invalid_stored_device_then_readd(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    inst = lab.add_instance()
    echo_server(lab, inst, "tcp", "127.0.0.1", 4321)
    d.register("proxyTester", inst)
    keys = [f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321", "bind=host"]
    d.add("proxyTester", "proxyDev", *keys)
    assert tcp_echo(lab, P) == b"checklist\n"

    # A7: the stored config goes bad behind the daemon's back; removal must still work
    d.set_stored_device_key("proxyTester", "proxyDev", "connect", "tcp:localhost:4321")
    assert d.lxc("config", "device", "get", "proxyTester", "proxyDev",
                 "connect").stdout.strip() == "tcp:localhost:4321"
    d.remove("proxyTester", "proxyDev")
    assert refused(lab, P)  # the old listener really went away

    # A8: the same listen port again
    d.add("proxyTester", "proxyDev", *keys)
    assert tcp_echo(lab, P) == b"checklist\n"
