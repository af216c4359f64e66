"""The lab itself: reachability across namespaces, isolation of /tmp, and a clean teardown."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from lab import Lab
from lab.traffic import roundtrip

pytestmark = pytest.mark.lab


def test_instance_server_reachable_from_host_over_veth(lab: Lab) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "::", 4321)
    assert roundtrip(lab.host, inst.ipv4, 4321, b"hello v4") == b"hello v4"
    assert roundtrip(lab.host, inst.ipv6, 4321, b"hello v6", socket.AF_INET6) == b"hello v6"


def test_instance_unix_socket_is_invisible_on_host(lab: Lab, tmp_path) -> None:
    inst = lab.add_instance()
    name = f"/tmp/lxplab-{lab.tag}.sock"
    lab.echo(inst, "unix", name)
    assert not os.path.exists(name)
    assert inst.run(["test", "-S", name], check=False).returncode == 0
    out = inst.run(["sh", "-c", f"echo ping | socat - UNIX-CONNECT:{name}"]).stdout
    assert out == b"ping\n"


def test_restart_gives_new_pid_same_address(lab: Lab) -> None:
    inst = lab.add_instance()
    old_pid = inst.pid
    inst.restart()
    assert inst.pid != old_pid
    lab.echo(inst, "tcp", "0.0.0.0", 4321)
    assert roundtrip(lab.host, inst.ipv4, 4321, b"again") == b"again"


def test_client_is_routed_through_host(lab: Lab) -> None:
    inst = lab.add_instance()
    client = lab.add_client()
    lab.echo(inst, "tcp", "::", 4321)
    assert roundtrip(client, inst.ipv4, 4321, b"routed") == b"routed"
    assert roundtrip(client, inst.ipv6, 4321, b"routed6", socket.AF_INET6) == b"routed6"


def test_userns_instance_maps_root(lab: Lab) -> None:
    inst = lab.add_instance(userns=True)
    uid_map = open(f"/proc/{inst.pid}/uid_map").read().split()
    assert uid_map == ["0", "100000", "65536"]
    assert inst.run(["id", "-u"]).stdout.strip() == b"0"


def test_teardown_leaves_nothing_behind() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab() as lab:
        inst = lab.add_instance()
        client = lab.add_client()
        server = lab.echo(inst, "tcp", "0.0.0.0", 4321)
        names = [lab.host.name, client.name]
        lab_links = {inst.veth_host, client.veth_host, "br0"}
        pids = [inst.pid, server.pid]
    # Whole names, never substrings: a machine running LXD has lxdbr0 (and an lxd netns or two).
    listed = _first_words(["ip", "netns", "list"])
    for name in names:
        assert name not in listed
        assert not os.path.exists(f"/run/netns/{name}")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # The machine's own namespace gained no links from the lab.
    links = {word.rstrip(":").partition("@")[0] for word in _first_words(["ip", "-o", "link"], 1)}
    assert "lo" in links  # the parse itself works
    assert not lab_links & links


def _first_words(argv: list[str], index: int = 0) -> set[str]:
    """Word ``index`` of every line ``argv`` prints (``ip -o link``: "1: lo: <...>")."""
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {line.split()[index] for line in out.splitlines() if line.strip()}
