"""LXD checklist part A (spec §7 A1-A8): validation through the real ``lxc`` client, with LXD's
exact ``Error: ...`` lines, and the device lifecycle around an invalid stored config."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from lab.checklist import P2, Daemon, P, echo_server, refused, tcp_echo

pytestmark = [pytest.mark.lab, pytest.mark.lxc,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]


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


def test_a1_on_device_set_keeps_the_running_device(lab: Any, checklist_daemon: Daemon) -> None:
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


# Beyond the checklist: more of LXD's exact texts (spec §1, §1.1, §2) as lxc prints them.
MORE = [
    (["listen=tcp:127.0.0.1:80"],
     'Invalid value for device option "connect": Unknown protocol type ""'),
    (["listen=tcp:127.0.0.1", "connect=tcp:127.0.0.1:80"],
     'Invalid value for device option "listen": address 127.0.0.1: missing port in address'),
    (["listen=tcp:127.0.0.1:80-80", "connect=tcp:127.0.0.1:80"],
     'Invalid value for device option "listen": End port should be higher than start port'),
    (["listen=tcp:127.0.0.1:1-2-3", "connect=tcp:127.0.0.1:80"],
     'Invalid value for device option "listen": Invalid port range "1-2-3"'),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:x"],
     'Invalid value for device option "connect": strconv.ParseInt: parsing "x": invalid syntax'),
    (["listen=TCP:127.0.0.1:80", "connect=tcp:127.0.0.1:80"],
     'Invalid value for device option "listen": Unknown protocol type "TCP"'),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80", "bind=nowhere"],
     'Invalid value for device option "bind": Invalid binding side given. Must be "host" or "instance"'),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80", "nat=maybe"],
     'Invalid value for device option "nat": Invalid value for a boolean "maybe"'),
    (["listen=unix:/x.sock", "connect=tcp:127.0.0.1:80", "uid=-1"],
     'Invalid value for device option "uid": Invalid value for a UNIX ID'),
    (["listen=unix:/x.sock", "connect=tcp:127.0.0.1:80", "mode=0999"],
     'Invalid value for device option "mode": Invalid value for an octal file mode'),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80", "foo=bar"],
     'Invalid device option "foo"'),
    (["listen=tcp:127.0.0.1:80,81", "connect=tcp:127.0.0.1:80-82"],
     "Mismatch between listen port(s) and connect port(s) count"),
    (["listen=tcp:127.0.0.1:80", "connect=udp:127.0.0.1:80", "proxy_protocol=true"],
     "The PROXY header can only be sent to tcp servers in non-nat mode"),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80", "uid=1000"],
     "Only proxy devices for non-abstract unix sockets can carry uid, gid, or mode properties"),
    (["listen=tcp:127.0.0.1:80", "connect=tcp:127.0.0.1:80", "nat=true", "bind=instance"],
     "Only host-bound proxies can use NAT"),
    (["listen=tcp:127.0.0.1:80", "connect=udp:127.0.0.1:80", "nat=true"],
     "Proxying tcp <-> udp is not supported when using NAT"),
    (["listen=unix:/x.sock", "connect=unix:/y.sock", "nat=true"],
     "Proxying unix <-> unix is not supported when using NAT"),
    # docs/compatibility.md, deliberate differences: rows "udp: listen with tcp:/unix: connect"
    # and "port 0 or > 65535" (LXD accepts these and fails at start)
    (["listen=udp:127.0.0.1:80", "connect=tcp:127.0.0.1:80"],
     "Proxying from udp to non-udp protocol is not supported"),
    (["listen=tcp:127.0.0.1:70000", "connect=tcp:127.0.0.1:80"],
     'Invalid value for device option "listen": Invalid port "70000": must be between 1 and 65535'),
]


def test_more_lxd_error_texts(lab: Any, checklist_daemon: Daemon) -> None:
    d = checklist_daemon
    d.register("proxyTester", lab.add_instance())
    for keys, message in MORE:
        err = d.lxc_error("config", "device", "add", "proxyTester", "proxyDev", "proxy", *keys)
        assert err == PREFIX + message, keys
    # device set goes through the same validation
    d.add("proxyTester", "proxyDev", f"listen=tcp:127.0.0.1:{P}", "connect=tcp:127.0.0.1:4321")
    err = d.lxc_error("config", "device", "set", "proxyTester", "proxyDev", "bind=nowhere")
    assert err == PREFIX + ('Invalid value for device option "bind": Invalid binding side '
                            'given. Must be "host" or "instance"')
    # VMs: NAT only (spec §1.1 step 2), the instance type comes from the registration
    status, out = d.api("POST", "/1.0/instances", {
        "name": "vm1", "type": "virtual-machine", "source": {"type": "none"},
        "config": {"user.lxdproxy.pid": str(d.state("proxyTester")["pid"])}})
    assert out["metadata"]["status"] == "Success", out
    err = d.lxc_error("config", "device", "add", "vm1", "proxyDev", "proxy",
                      f"listen=tcp:127.0.0.1:{P2}", "connect=tcp:127.0.0.1:4321")
    assert err == PREFIX + "Only NAT mode is supported for proxies on VM instances"
