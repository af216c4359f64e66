"""``GET /1.0/metrics`` of the real daemon (in lab.host) after a known workload, read back with
prometheus_client's own text parser: every figure checked exactly."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pylxd import Client

from lab.daemon import RunningDaemon
from lab.traffic import eventually_roundtrip, roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"
N_CONNECTIONS, PAYLOAD = 5, 1024
N_DATAGRAMS, DATAGRAM = 7, 100


@pytest.fixture
def daemon(running_daemon: RunningDaemon) -> RunningDaemon:
    return running_daemon


def curl(daemon: RunningDaemon, method: str, path: str, body: Any = None) -> str:
    argv = ["curl", "-sS", "--unix-socket", str(daemon.socket), "-X", method]
    if body is not None:
        argv += ["-d", json.dumps(body)]
    return subprocess.run(argv + [f"http://lxd{path}"], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def scrape(daemon: RunningDaemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    out = {}
    for family in text_string_to_metric_families(curl(daemon, "GET", "/1.0/metrics")):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labels(device: str, protocol: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"project": "default", "instance": "c1", "device": device,
                         "protocol": protocol}.items()))


def test_metrics_count_a_known_workload_exactly(lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    lab.echo(inst, "udp", "127.0.0.1", 9001)
    devices = {
        "eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
        "web": {"type": "proxy", "listen": f"tcp:{HOST}:7300", "connect": "tcp:127.0.0.1:9000"},
        "dns": {"type": "proxy", "listen": f"udp:{HOST}:7301", "connect": "udp:127.0.0.1:9001"},
        "dead": {"type": "proxy", "listen": f"tcp:{HOST}:7302", "connect": "tcp:127.0.0.1:9999"},
    }
    body = {"name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)}, "devices": devices}
    assert json.loads(curl(daemon, "POST", "/1.0/instances", body))["metadata"]["status"] == \
        "Success"

    before = scrape(daemon)
    assert before[("lxdproxy_device_up", labels("web", "tcp"))] == 1
    assert before[("lxdproxy_device_connections_total", labels("web", "tcp"))] == 0

    payload = bytes(range(256)) * 4  # PAYLOAD bytes
    assert len(payload) == PAYLOAD
    eventually_roundtrip(lab.host, HOST, 7300, payload)
    for _ in range(N_CONNECTIONS - 1):
        assert roundtrip(lab.host, HOST, 7300, payload) == payload

    udp = lab.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        for i in range(N_DATAGRAMS):
            datagram = bytes([i]) * DATAGRAM
            udp.sendto(datagram, (HOST, 7301))
            assert udp.recv(65536) == datagram  # one at a time: none can be dropped
        # The failed connect: accepted, then closed at once when the dial is refused.
        with lab.host.socket() as doomed:
            doomed.connect((HOST, 7302))
            assert doomed.recv(1) == b""

        # Relays close on their own after the echo's EOF; wait for the gauge to settle.
        deadline = time.monotonic() + 10
        while True:
            m = scrape(daemon)
            if m[("lxdproxy_device_connections_active", labels("web", "tcp"))] == 0 \
                    and m[("lxdproxy_device_connections_active", labels("dead", "tcp"))] == 0:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)

        web, dns, dead = labels("web", "tcp"), labels("dns", "udp"), labels("dead", "tcp")
        expected = {
            ("lxdproxy_device_up", web): 1,
            ("lxdproxy_device_connections_total", web): N_CONNECTIONS,
            ("lxdproxy_device_connect_failures_total", web): 0,
            ("lxdproxy_device_bytes_in_total", web): N_CONNECTIONS * PAYLOAD,
            ("lxdproxy_device_bytes_out_total", web): N_CONNECTIONS * PAYLOAD,
            ("lxdproxy_device_datagrams_in_total", web): 0,
            ("lxdproxy_device_udp_sessions_active", web): 0,
            ("lxdproxy_device_up", dns): 1,
            ("lxdproxy_device_connections_total", dns): 0,
            ("lxdproxy_device_datagrams_in_total", dns): N_DATAGRAMS,
            ("lxdproxy_device_datagrams_out_total", dns): N_DATAGRAMS,
            ("lxdproxy_device_datagrams_dropped_total", dns): 0,
            ("lxdproxy_device_bytes_in_total", dns): N_DATAGRAMS * DATAGRAM,
            ("lxdproxy_device_bytes_out_total", dns): N_DATAGRAMS * DATAGRAM,
            ("lxdproxy_device_udp_sessions_active", dns): 1,  # the client's session is alive
            ("lxdproxy_device_connect_failures_total", dns): 0,
            ("lxdproxy_device_up", dead): 1,
            ("lxdproxy_device_connections_total", dead): 1,
            ("lxdproxy_device_connect_failures_total", dead): 1,
            ("lxdproxy_device_bytes_in_total", dead): 0,
            ("lxdproxy_device_bytes_out_total", dead): 0,
        }
        assert {k: m[k] for k in expected} == expected
    # The daemon's own process metrics come along.
    assert m[("lxdproxy_process_open_fds", ())] > 0
    assert m[("lxdproxy_process_resident_memory_bytes", ())] > 0


def test_counters_survive_a_device_update_and_go_when_it_is_removed(
        lab: Any, daemon: RunningDaemon) -> None:
    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 9000)
    web = {"type": "proxy", "listen": f"tcp:{HOST}:7310", "connect": "tcp:127.0.0.1:9000"}
    body = {"name": "c1", "source": {"type": "none"},
            "config": {"user.lxdproxy.pid": str(inst.pid)}, "devices": {"web": web}}
    curl(daemon, "POST", "/1.0/instances", body)
    eventually_roundtrip(lab.host, HOST, 7310, b"12345")

    # Any change restarts the device (stop + start): its counters carry on from where they were.
    patch = {"devices": {"web": {**web, "listen": f"tcp:{HOST}:7311"}}}
    assert json.loads(curl(daemon, "PATCH", "/1.0/instances/c1", patch))["error"] == ""
    eventually_roundtrip(lab.host, HOST, 7311, b"678")
    m = scrape(daemon)
    assert m[("lxdproxy_device_connections_total", labels("web", "tcp"))] == 2
    assert m[("lxdproxy_device_bytes_in_total", labels("web", "tcp"))] == 8

    curl(daemon, "PATCH", "/1.0/instances/c1", {"devices": {"web": None}})
    assert not [k for k in scrape(daemon) if ("device", "web") in k[1]]


def test_nat_device_counts_packets_and_bytes_from_its_rules(lab: Any,
                                                            daemon: RunningDaemon) -> None:
    """nft counters on the DNAT rules: a NAT chain sees each flow's first packet only, so N
    connections are N packets or more (a retransmitted SYN is counted too)."""
    inst = lab.add_instance()
    client_ns = lab.add_client()
    lab.echo(inst, "tcp", "0.0.0.0", 9000)
    pylxd = Client(endpoint=str(daemon.socket))
    pylxd.instances.create({
        "name": "c1", "source": {"type": "none"},
        "config": {"user.lxdproxy.pid": str(inst.pid)},
        "devices": {"eth0": {"type": "nic", "network": "br0", "ipv4.address": inst.ipv4},
                    "web": {"type": "proxy", "listen": f"tcp:{HOST}:7400",
                            "connect": "tcp:0.0.0.0:9000", "nat": "true"},
                    "idle": {"type": "proxy", "listen": f"tcp:{HOST}:7401",
                             "connect": "tcp:0.0.0.0:9000", "nat": "true"}},
    }, wait=True)
    web, idle = labels("web", "tcp"), labels("idle", "tcp")
    before = scrape(daemon)
    assert before[("lxdproxy_nat_packets_total", web)] == 0
    assert before[("lxdproxy_nat_bytes_total", web)] == 0
    for _ in range(N_CONNECTIONS):
        assert roundtrip(client_ns, HOST, 7400) == b"ping"
    m = scrape(daemon)
    assert m[("lxdproxy_device_up", web)] == 1
    assert m[("lxdproxy_nat_packets_total", web)] >= N_CONNECTIONS
    assert m[("lxdproxy_nat_bytes_total", web)] >= N_CONNECTIONS * 60  # a SYN is 60 bytes or more
    assert m[("lxdproxy_nat_packets_total", idle)] == 0
    assert m[("lxdproxy_nat_bytes_total", idle)] == 0
    # Relay counters are for forwarded devices: a NAT device has none.
    assert ("lxdproxy_device_connections_total", web) not in m
    nat_series = {k for k in m if k[0].startswith("lxdproxy_nat_")}
    assert nat_series == {(name, lb) for name in ("lxdproxy_nat_packets_total",
                                                  "lxdproxy_nat_bytes_total")
                          for lb in (web, idle)}
