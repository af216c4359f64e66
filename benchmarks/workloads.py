"""One run of one workload against one peer. Each returns a flat dict of numbers (JSON-ready)."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from typing import Any

from benchmarks import procstat
from benchmarks.daemon import LxdproxyDaemon
from benchmarks.env import ECHO_PORT, BenchEnv, wait_line
from benchmarks.peers import Forkproxy, Lxdproxy, Peer
from benchmarks.sizes import Sizes

GIB = 1 << 30


def bulk(env: BenchEnv, peer: Peer, sizes: Sizes) -> dict[str, Any]:
    """iperf3 -c <peer> -n <size>: host -> instance. CPU is the forwarding processes' utime+stime over
    the run, divided by the GiB the receiver got; the sender's and the receiver's CPU come from
    iperf3's own accounting (its ``cpu_utilization_percent``, of one CPU over the test).

    The kernel's TCP work for a loopback or veth hop runs in whichever process's system call or
    softirq happens to process it (a sender's transmit often carries the receiver's protocol work;
    an ACK processed in the proxy can push the sender's queued data out in the proxy's time), so
    the proxy's share moves between runs while the path's total (sender + proxy + receiver) is
    steadier: both are recorded."""
    pids = peer.cpu_pids()
    cpu0 = procstat.cpu_seconds(pids)
    busy0, total0 = procstat.machine_ticks()
    doc = env.host_json(["iperf3", "-c", peer.bulk.host, "-p", str(peer.bulk.port), "-n", sizes.bulk_bytes,
                         "-J", "--connect-timeout", "3000"], timeout=300)
    busy1, total1 = procstat.machine_ticks()
    time.sleep(0.2)  # let socat reap its per-connection child so its CPU lands in cutime
    cpu = procstat.cpu_seconds(pids) - cpu0
    recv = doc["end"]["sum_received"]
    gib = recv["bytes"] / GIB
    util = doc["end"].get("cpu_utilization_percent", {})
    sender = util.get("host_total", 0.0) / 100 * recv["seconds"] / gib if gib else None
    receiver = util.get("remote_total", 0.0) / 100 * recv["seconds"] / gib if gib else None
    out = {"gbit_s": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"], "seconds": recv["seconds"],
           "sender_cpu_s_per_gib": sender, "receiver_cpu_s_per_gib": receiver,
           "retransmits": doc["end"]["sum_sent"].get("retransmits", 0),
           # every CPU of the machine (other jobs included): near 100 means the run was CPU-bound
           "machine_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0)}
    path = (sender or 0.0) + (receiver or 0.0)
    if not peer.in_kernel:
        out["cpu_s"] = cpu
        out["cpu_s_per_gib"] = cpu / gib if gib else None
        path += out["cpu_s_per_gib"] or 0.0
    out["path_cpu_s_per_gib"] = path if gib else None
    return out


def bulk_scraped(env: BenchEnv, peer: Peer, sizes: Sizes) -> dict[str, Any]:
    """``bulk`` while a thread scrapes ``GET /1.0/metrics`` every scrape_interval s (lxdproxy only)."""
    if not isinstance(peer, Lxdproxy) or peer.nat:
        raise ValueError(f"bulk_scraped runs through lxdproxy's own relays, not {peer.name}")
    stop = threading.Event()
    scrapes: list[float] = []
    failures: list[str] = []

    def scrape() -> None:
        while not stop.is_set() and len(scrapes) < 10000:
            t0 = time.monotonic()
            status, _ = peer.daemon.request_raw("GET", "/1.0/metrics")
            if status == 200:
                scrapes.append((time.monotonic() - t0) * 1000)
            elif len(failures) < 5:
                failures.append(str(status))
            stop.wait(max(0.0, sizes.scrape_interval - (time.monotonic() - t0)))

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        out = bulk(env, peer, sizes)
    finally:
        stop.set()
        thread.join(30)
    if failures or not scrapes:
        raise RuntimeError(f"GET /1.0/metrics failed during bulk: {failures or 'no scrape'}")
    return {**out, "scrapes": len(scrapes), "scrape_max_ms": max(scrapes),
            "scrape_median_ms": statistics.median(scrapes)}


def connrate(env: BenchEnv, peer: Peer, sizes: Sizes, clients: int) -> dict[str, Any]:
    """``clients`` client processes, each: connect, 64-byte request, 64-byte reply, close; for a fixed
    window."""
    start_at = time.monotonic() + 0.5  # every client has imported and is waiting by then
    pids = peer.cpu_pids()
    server = [env.echo_pid] if env.echo_pid else []
    (user0, sys0), server0 = procstat.cpu_split(pids), procstat.cpu_seconds(server)
    busy0, total0 = procstat.machine_ticks()
    procs = [env.host_python("benchmarks.clients", "connrate", peer.echo.host, str(peer.echo.port),
                             "--start-at", repr(start_at), "--seconds", str(sizes.connrate_seconds))
             for _ in range(clients)]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=sizes.connrate_seconds + 30)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise RuntimeError("connrate client overran its window") from None
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    busy1, total1 = procstat.machine_ticks()
    done = sum(r["connections"] for r in results)
    errors = sum(r["errors"] for r in results)
    window = max(r["seconds"] for r in results)
    if done == 0:
        raise RuntimeError(f"no connection completed: {results[0]['last_error']}")
    out = {"conn_s": done / window, "connections": done, "errors": errors, "clients": len(results),
           # where the machine's CPU went, per connection: what bounds conn/s when every core is
           # busy (the clients and the echo server share the cores with the proxy)
           "machine_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
           "machine_cpu_us_per_conn": (busy1 - busy0) / procstat.TICK / done * 1e6,
           "client_cpu_us_per_conn": sum(r["cpu_s"] for r in results) / done * 1e6,
           "server_cpu_us_per_conn": (procstat.cpu_seconds(server) - server0) / done * 1e6}
    if not peer.in_kernel:  # proxy CPU over the window (plus client start-up; the proxy idles then)
        user1, sys1 = procstat.cpu_split(pids)
        out["cpu_us_per_conn"] = (user1 - user0 + sys1 - sys0) / done * 1e6
        out["cpu_user_us_per_conn"] = (user1 - user0) / done * 1e6
        out["cpu_sys_us_per_conn"] = (sys1 - sys0) / done * 1e6
    return out


def latency(env: BenchEnv, peer: Peer, sizes: Sizes) -> dict[str, Any]:
    return env.client_json("latency", peer.echo.host, str(peer.echo.port),
                           "--requests", str(sizes.latency_requests), timeout=120)


def udp(env: BenchEnv, peer: Peer, sizes: Sizes, streams: int = 1) -> dict[str, Any]:
    """iperf3 -u -l 64 -b <far above capacity>. Loss = 1 - (datagrams the iperf3 server in the instance
    received) / (datagrams the client sent); received = the server's byte count / 64. (iperf3's own
    lost_packets counts only sequence gaps, so it misses losses after the last datagram that arrived.)
    ``streams`` > 1: iperf3 -P, one socket (one client address:port, one proxy session) each, all
    sent by the one iperf3 process: the same offered load spread over many clients."""
    pids = peer.cpu_pids()
    cpu0 = procstat.cpu_seconds(pids)
    host0, inst0 = _udp_rcvbuf_errors(env.host), _udp_rcvbuf_errors(env.inst)
    doc = env.host_json(["iperf3", "-c", peer.bulk.host, "-p", str(peer.bulk.port), "-u", "-l", "64",
                         "-b", sizes.udp_rate, "-t", str(sizes.udp_seconds), "-J",
                         "--connect-timeout", "3000", *(["-P", str(streams)] if streams > 1 else [])],
                        timeout=sizes.udp_seconds + 60)
    _wait_udp_drained(env, peer)
    sent = doc["end"]["sum_sent"]["packets"]
    recv = doc["end"]["sum_received"]
    received = recv["bytes"] // 64
    out = {"rx_pps": received / recv["seconds"], "sent": sent, "received": received,
           "loss_pct": 100.0 * (1 - received / sent) if sent else None,
           "tx_pps": sent / doc["end"]["sum_sent"]["seconds"]}
    if not peer.in_kernel and received:
        out["cpu_us_per_datagram"] = (procstat.cpu_seconds(pids) - cpu0) / received * 1e6
    # Where the datagrams died: a full receive buffer in the lab host netns is the proxy's listening
    # socket (nothing else receives UDP there); in the instance it is the iperf3 server's socket.
    if sent:
        out["dropped_in_host_pct"] = 100.0 * (_udp_rcvbuf_errors(env.host) - host0) / sent
        out["dropped_in_instance_pct"] = 100.0 * (_udp_rcvbuf_errors(env.inst) - inst0) / sent
    return out


def _wait_udp_drained(env: BenchEnv, peer: Peer, timeout: float = 5.0) -> None:
    """A proxy keeps forwarding what its listening socket queued after the sender stopped: let it
    finish before the next test, so no stale datagram reaches a later test's server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = env.host.run(["ss", "-Huln", f"sport = :{peer.bulk.port}"],
                            check=False).stdout.splitlines()
        # columns: State Recv-Q Send-Q ...; one row per socket (the spread has one per worker)
        if all(row.split()[1] == b"0" for row in rows if row.split()):
            return
        time.sleep(0.05)


def _udp_rcvbuf_errors(place: Any) -> int:
    """Udp RcvbufErrors of the netns ``place`` lives in (/proc/net/snmp is per network namespace)."""
    lines = [ln.split() for ln in place.run(["cat", "/proc/net/snmp"]).stdout.decode().splitlines()
             if ln.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def device_add(env: BenchEnv, peer: Peer, sizes: Sizes) -> dict[str, Any]:
    """From just before the add is asked for (REST PATCH for lxdproxy; spawning the process for
    forkproxy/socat) to the first byte echoed back through the new forward, seen by a client that
    retries every 0.5 ms."""
    samples, returned = [], []
    for i in range(sizes.device_add_trials):
        port = peer.base_port + 100 + i
        probe = env.host_python("benchmarks.clients", "probe", peer.listen_ip, str(port),
                                "--timeout", "10", stdin=subprocess.PIPE)
        try:
            wait_line(probe, "READY", 10, "probe")
            assert probe.stdin is not None
            probe.stdin.write(b"go\n")
            probe.stdin.flush()
            t0 = peer.add_forward(i, port)
            returned.append((time.monotonic() - t0) * 1000)  # the REST call's (or spawn's) own time
            out, _ = probe.communicate(timeout=20)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
        res = json.loads(out.decode().strip().splitlines()[-1])
        peer.remove_forward(i, port)
        if "error" in res:
            raise RuntimeError(f"device add through {peer.name}: {res['error']}")
        samples.append((res["t_first_byte"] - t0) * 1000)
    return {"median_ms": statistics.median(samples), "samples_ms": samples,
            "request_returned_ms": returned}


# -- memory ----------------------------------------------------------------------------------------
def memory_lxdproxy(env: BenchEnv, sizes: Sizes) -> dict[str, Any]:
    """A fresh daemon (its own state dir) with 1, 100, 1000 tcp devices; RSS/PSS of the daemon and
    every process under it. The last device is checked to really forward before measuring."""
    daemon = LxdproxyDaemon(env.lab, label="bench-mem")
    out: dict[str, Any] = {}
    try:
        daemon.start()
        daemon.add_instance("mem", env.inst)
        out["0"] = daemon.memory_kib()
        have = 0
        for n in sizes.memory_devices:
            t0 = time.monotonic()
            daemon.patch_devices("mem", {
                f"m{i}": {"type": "proxy", "listen": f"tcp:{env.host.ipv4}:{20000 + i}",
                          "connect": f"tcp:127.0.0.1:{ECHO_PORT}"}
                for i in range(have, n)})
            add_s = time.monotonic() - t0
            have = n
            check = _probe_now(env, env.host.ipv4, 20000 + n - 1)
            time.sleep(sizes.settle_seconds)
            out[str(n)] = {**daemon.memory_kib(), "add_seconds": add_s, "probe": check,
                           "by_process": procstat.memory_by_process(daemon.pids())}
    finally:
        daemon.stop()
    return out


def _probe_now(env: BenchEnv, host: str, port: int) -> str:
    probe = env.host_python("benchmarks.clients", "probe", host, str(port), "--timeout", "5",
                            stdin=subprocess.PIPE)
    out, _ = probe.communicate(b"go\n", timeout=30)
    res = out.decode().strip().splitlines()[-1]
    if "t_first_byte" not in res:
        raise RuntimeError(f"device on port {port} does not forward: {res}")
    return "ok"


def memory_forkproxy(env: BenchEnv, sizes: Sizes) -> dict[str, Any]:
    """Start N forkproxy processes (one per device, as LXD does) and sum their RSS/PSS; the figures for
    100 and 1,000 devices are extrapolated from the per-process mean (N x mean RSS)."""
    fp = Forkproxy(env, 21000)
    out: dict[str, Any] = {}
    try:
        for n in sizes.forkproxy_memory_procs:
            while len(fp.procs) < n:
                i = len(fp.procs)
                fp.procs.append(fp.spawn(f"tcp:{env.host.ipv4}:{21000 + i}", f"tcp:127.0.0.1:{ECHO_PORT}"))
            _probe_now(env, env.host.ipv4, 21000 + n - 1)
            time.sleep(sizes.settle_seconds)
            mem = procstat.memory_kib(fp.cpu_pids())
            out[str(n)] = {**mem, "measured": True}
        n_meas = max(sizes.forkproxy_memory_procs)
        per_rss = out[str(n_meas)]["rss_kib"] / n_meas
        per_pss = out[str(n_meas)]["pss_kib"] / n_meas
        for n in sizes.memory_devices:
            if str(n) not in out:
                out[str(n)] = {"rss_kib": round(per_rss * n), "pss_kib": round(per_pss * n),
                               "processes": n, "measured": False}
    finally:
        fp.stop()
    return out
