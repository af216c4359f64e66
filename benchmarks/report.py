"""Raw results -> medians, ratios against forkproxy and direct, a markdown report and a PNG plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report_restart

PEER_ORDER = ["direct", "socat", "forkproxy", "lxdproxy", "lxdproxy-nat"]
MB = 1024  # KiB per MiB


@dataclass(frozen=True)
class Metric:
    key: str  # row id in summaries
    workload: str
    field: str
    title: str
    unit: str
    higher_is_better: bool


METRICS = [
    Metric("bulk", "bulk", "gbit_s", "Bulk TCP host→instance", "Gbit/s", True),
    Metric("bulk_scraped", "bulk_scraped", "gbit_s", "Bulk TCP, `GET /1.0/metrics` every 1 s",
           "Gbit/s", True),
    Metric("bulk_busy", "bulk", "machine_busy_pct", "Machine CPU busy during bulk (all cores)", "%",
           False),
    Metric("cpu_per_gib", "bulk", "cpu_s_per_gib", "Proxy CPU per GiB (bulk)", "CPU s/GiB", False),
    Metric("conn_rate_2", "connrate_2", "conn_s", "Connection rate, 2 clients (64 B req/resp)",
           "conn/s", True),
    Metric("conn_rate_4", "connrate_4", "conn_s", "Connection rate, 4 clients (64 B req/resp)",
           "conn/s", True),
    Metric("cpu_per_conn_2", "connrate_2", "cpu_us_per_conn", "Proxy CPU per connection, 2 clients",
           "CPU µs", False),
    Metric("cpu_per_conn_4", "connrate_4", "cpu_us_per_conn", "Proxy CPU per connection, 4 clients",
           "CPU µs", False),
    Metric("lat_p50", "latency", "p50_us", "Request/response latency p50", "µs", False),
    Metric("lat_p99", "latency", "p99_us", "Request/response latency p99", "µs", False),
    Metric("udp_pps", "udp", "rx_pps", "UDP 64 B received", "pps", True),
    Metric("udp_loss", "udp", "loss_pct", "UDP 64 B loss", "%", False),
    Metric("udp_drop_host", "udp", "dropped_in_host_pct", "UDP dropped at the proxy's socket (host)",
           "% of sent", False),
    Metric("udp_drop_inst", "udp", "dropped_in_instance_pct",
           "UDP dropped at the server's socket (instance)", "% of sent", False),
    Metric("cpu_per_dgram", "udp", "cpu_us_per_datagram", "Proxy CPU per UDP datagram received",
           "CPU µs", False),
]


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float)]
    return statistics.median(vals) if vals else None


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """metric key -> peer -> median (None when the peer did not run or every run failed)."""
    out: dict[str, dict[str, float | None]] = {}
    peers = results["peers"]
    for m in METRICS:
        runs = results["runs"].get(m.workload, {})
        out[m.key] = {p: _median([r.get(m.field) for r in runs.get(p, [])]) for p in peers}
    dev = results.get("device_add", {})
    out["device_add_ms"] = {p: (dev[p].get("median_ms") if p in dev else None) for p in peers}
    mem = results.get("memory", {})
    for n in results["meta"]["sizes"]["memory_devices"]:
        row: dict[str, float | None] = {p: None for p in peers}
        for peer in ("lxdproxy", "forkproxy"):
            point = mem.get(peer, {}).get(str(n))
            if isinstance(point, dict) and "rss_kib" in point:
                row[peer] = point["rss_kib"] / MB
        out[f"rss_{n}"] = row
    return out


ROW_TITLES = {m.key: (m.title, m.unit) for m in METRICS} | {
    "device_add_ms": ("Device add → first forwarded byte (median)", "ms"),
}


def _row_title(key: str, results: dict[str, Any]) -> tuple[str, str]:
    if key.startswith("rss_"):
        n = int(key[4:])
        return (f"Memory, {n:,} TCP device{'s' if n != 1 else ''} (RSS, whole daemon / N forkproxy)", "MiB")
    return ROW_TITLES[key]


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or not ref:
        return ""
    r = v / ref
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"  # 1,000 devices vs 1,000 processes: 0.0016×


def markdown_table(results: dict[str, Any], summary: dict[str, dict[str, float | None]]) -> str:
    peers = results["peers"]
    lines = ["| metric | unit | " + " | ".join(peers) + " |",
             "|---|---|" + "---:|" * len(peers)]
    for key, row in summary.items():
        if all(v is None for v in row.values()):
            continue  # that workload was not run
        title, unit = _row_title(key, results)
        cells = []
        for p in peers:
            v = row.get(p)
            extra = []
            if p != "forkproxy" and (r := _ratio(v, row.get("forkproxy"))):
                extra.append(f"{r} fp")
            if p != "direct" and (r := _ratio(v, row.get("direct"))):
                extra.append(f"{r} d")
            cells.append(fmt(v) + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"| {title} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    title: str
    key: str
    ref: str | None  # None: absolute bound; else the reference peer (a ratio is compared)
    bound: float
    at_least: bool
    ref_key: str | None = None  # the reference's row, when not ``key`` (scraped vs unscraped bulk)


TARGETS = [
    Target("Bulk ≥ 1.3× forkproxy", "bulk", "forkproxy", 1.3, True),
    Target("Bulk ≥ 0.9× direct", "bulk", "direct", 0.9, True),
    Target("Bulk with `/1.0/metrics` scraped every 1 s ≥ 0.95× unscraped (same run)", "bulk_scraped",
           "lxdproxy", 0.95, True, ref_key="bulk"),
    Target("Connection rate, 2 clients ≥ 1.5× forkproxy", "conn_rate_2", "forkproxy", 1.5, True),
    Target("Connection rate, 4 clients ≥ 1.5× forkproxy", "conn_rate_4", "forkproxy", 1.5, True),
    Target("Latency p99 no worse than forkproxy (≤ 1.0×)", "lat_p99", "forkproxy", 1.0, False),
    Target("UDP received pps ≥ 1.2× forkproxy", "udp_pps", "forkproxy", 1.2, True),
    Target("`kill -9` + restart of the control plane: 0 refused/failed connects", "restart_kill9_lost",
           None, 0, False),
    Target("`kill -9` + restart: 0 held-connection breaks", "restart_kill9_breaks", None, 0, False),
    Target("`lxdproxy reload`: 0 refused/failed connects", "restart_reload_lost", None, 0, False),
    Target("`lxdproxy reload`: 0 held-connection breaks", "restart_reload_breaks", None, 0, False),
    Target("1,000 TCP devices, default workers ≤ 150 MB RSS (every process)", "rss_1000", None,
           150 * 1e6 / (1 << 20), False),
    Target("Device add → first byte ≤ 20 ms (median)", "device_add_ms", None, 20.0, False),
]


def targets_table(summary: dict[str, dict[str, float | None]], peer: str = "lxdproxy",
                  restart: dict[str, dict[str, float]] | None = None) -> str:
    rows = {**summary, **report_restart.target_rows(restart or {})}
    lines = [f"| target | {peer} measured | met? |", "|---|---:|:---:|"]
    for t in TARGETS:
        row = rows.get(t.key, {})
        v = row.get(peer)
        if t.ref is not None:
            ref = rows.get(t.ref_key or t.key, {}).get(t.ref)
            value = v / ref if v is not None and ref else None
            shown = f"{value:.2f}×" if value is not None else "–"
        else:
            value = v
            shown = fmt(v)
        if value is None:
            met = "not measured"
        else:
            met = "yes" if (value >= t.bound if t.at_least else value <= t.bound) else "**no**"
        lines.append(f"| {t.title} | {shown} | {met} |")
    return "\n".join(lines)


def memory_table(results: dict[str, Any]) -> str:
    """RSS and PSS per device count; forkproxy rows not measured are marked as extrapolated."""
    mem = results.get("memory", {})
    lx, fp = mem.get("lxdproxy", {}), mem.get("forkproxy", {})

    def cell(point: Any, key: str) -> str:
        if not isinstance(point, dict) or key not in point:
            return "–"
        text = fmt(point[key] / MB)
        return text if point.get("measured", True) else f"{text} (extrapolated)"

    lines = ["| TCP devices | lxdproxy RSS | lxdproxy PSS | lxdproxy processes | "
             "forkproxy RSS (N processes) | forkproxy PSS |",
             "|---:|---:|---:|---:|---:|---:|"]
    counts = sorted({int(n) for n in (*lx, *fp) if n.isdigit()})
    for n in counts:
        a, b = lx.get(str(n)), fp.get(str(n))
        procs = a.get("processes", "–") if isinstance(a, dict) else "–"
        lines.append(f"| {n:,} | {cell(a, 'rss_kib')} | {cell(a, 'pss_kib')} | {procs} | "
                     f"{cell(b, 'rss_kib')} | {cell(b, 'pss_kib')} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], summary: dict[str, dict[str, float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = results["peers"]
    colors = {"direct": "#888888", "socat": "#d9a441", "forkproxy": "#c0504d", "lxdproxy": "#4f81bd",
              "lxdproxy-nat": "#2e5d8f"}
    keys = ["bulk", "conn_rate_2", "conn_rate_4", "udp_pps", "device_add_ms", "lat_p50", "lat_p99",
            "udp_loss", "cpu_per_gib", "cpu_per_conn_2", "cpu_per_dgram"]
    fig, axes = plt.subplots(3, 4, figsize=(16, 11))
    for ax, key in zip(axes.flat, keys, strict=False):
        title, unit = _row_title(key, results)
        vals = [summary[key].get(p) for p in peers]
        xs = [p for p, v in zip(peers, vals, strict=True) if v is not None]
        ys = [v for v in vals if v is not None]
        ax.bar(xs, ys, color=[colors.get(p, "#999999") for p in xs])
        ax.set_title(f"{title}\n({unit}, {'higher' if _higher(key) else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(fmt(y), (x, y), ha="center", va="bottom", fontsize=7)
    ax = axes.flat[len(keys)]
    for peer in ("lxdproxy", "forkproxy"):
        ns = [n for n in results["meta"]["sizes"]["memory_devices"]
              if summary[f"rss_{n}"].get(peer) is not None]
        if ns:
            ax.plot(ns, [summary[f"rss_{n}"][peer] for n in ns], marker="o", label=peer,
                    color=colors[peer])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("Memory vs TCP devices\n(MiB RSS, lower is better; forkproxy extrapolated)", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.suptitle(f"lxdproxy benchmarks ({results['meta']['sizes']['name']} run, medians of "
                 f"{results['meta']['sizes']['rounds']} interleaved rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _round_loads(meta: dict[str, Any]) -> str:
    loads = meta.get("loadavg_rounds") or []
    return f", at the start of each round {', '.join(f'{la[0]:.2f}' for la in loads)}" if loads else ""


def scrape_table(results: dict[str, Any]) -> str:
    """lxdproxy bulk unscraped vs scraped: medians, ranges over the rounds, scrape times."""
    runs = results["runs"]
    plain = [r["gbit_s"] for r in runs.get("bulk", {}).get("lxdproxy", []) if "gbit_s" in r]
    scraped = [r for r in runs.get("bulk_scraped", {}).get("lxdproxy", []) if "gbit_s" in r]
    if not plain or not scraped:
        return ""
    gbit = [r["gbit_s"] for r in scraped]
    med_plain, med_scraped = statistics.median(plain), statistics.median(gbit)
    return "\n".join([
        "| lxdproxy bulk | median Gbit/s | min–max over rounds | scrapes per run | scrape time median / max |",
        "|---|---:|---:|---:|---:|",
        f"| not scraped | {fmt(med_plain)} | {fmt(min(plain))}–{fmt(max(plain))} | – | – |",
        f"| `/1.0/metrics` every 1 s | {fmt(med_scraped)} ({med_scraped / med_plain:.2f}×) | "
        f"{fmt(min(gbit))}–{fmt(max(gbit))} | {statistics.median(r['scrapes'] for r in scraped):.0f} | "
        f"{fmt(statistics.median(r['scrape_median_ms'] for r in scraped))} / "
        f"{fmt(max(r['scrape_max_ms'] for r in scraped))} ms |",
    ])


def _higher(key: str) -> bool:
    return next((m.higher_is_better for m in METRICS if m.key == key), False)


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def document(results: dict[str, Any], summary: dict[str, dict[str, float | None]], *, png: Path | None,
             js: Path, md: Path) -> str:
    meta = results["meta"]
    sizes = meta["sizes"]
    here = md.parent
    restart_summary = report_restart.summarize(results)
    la0, la1 = meta["loadavg_start"], meta.get("loadavg_end", ["?"] * 3)
    skipped = "".join(f"\n- **{p} not run**: {why}" for p, why in results.get("skipped", {}).items())
    errors = "".join(f"\n- {e}" for e in results.get("errors", []))
    mem = results.get("memory", {})
    fp_measured = sorted(int(n) for n, v in mem.get("forkproxy", {}).items()
                         if isinstance(v, dict) and v.get("measured"))
    parts = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench` (the code is in `benchmarks/`); do not edit by hand.",
        "",
        f"Run: **{sizes['name']}** sizes, {sizes['rounds']} interleaved rounds, {meta['date']}, git "
        f"`{meta['git']}`, kernel {meta['kernel']}, {meta['cpus']} CPUs, Python {meta['python']}, "
        f"LXD {meta.get('lxd') or '–'}, {meta.get('iperf3') or ''}, {meta.get('socat') or ''}.",
        "",
        f"> **Load caveat**: load average {la0[0]:.2f} at the start and {la1[0]:.2f} at the end "
        f"(1-minute){_round_loads(meta)}. On the 2-core development VM other jobs (the team's test "
        f"suites, other agents' labs) were running at the same time, so absolute numbers are noisy and "
        f"lower than on an idle machine. Every peer ran in the same run, interleaved round by round, so "
        f"the **ratios** are the meaningful part.",
        "",
        "## Results (medians)",
        "",
        "Cells: median (ratio to forkproxy `fp`, ratio to direct `d`). A ratio is value ÷ reference, "
        "so for latency, CPU and memory a ratio below 1 is better. `–`: not applicable or not run.",
        "",
        markdown_table(results, summary),
        "",
        "## Targets (lxdproxy, non-NAT)",
        "",
        targets_table(summary, restart=restart_summary),
        "",
    ]
    if restart_summary:
        parts += ["### Restarts", "",
                  "A client opens a connection every 20 ms (connect, 64 B request/response, close) and "
                  "a held connection echoes 64 B every 20 ms, from "
                  f"{sizes['restart_before_seconds']:g} s before the event until "
                  f"{sizes['restart_after_seconds']:g} s after it completed; figures are summed (or the "
                  "worst) over the trials. A gap of about 20-40 ms is one missed beat of the 20 ms "
                  "loop on a busy machine, not an outage.", "",
                  report_restart.table(results, restart_summary), ""]
    scrape = scrape_table(results)
    if scrape:
        parts += ["### Metrics scrape vs bulk throughput", "",
                  "The same daemon, the same run: bulk through lxdproxy right after its unscraped "
                  "runs, with a thread doing `GET /1.0/metrics` every second.", "", scrape, ""]
    if results.get("memory"):
        parts += ["### Memory (MiB)", "",
                  "0 devices = the daemon with its API up and no device. PSS splits shared pages (the "
                  "binary's text, libraries) between the processes that map them.", "",
                  memory_table(results), ""]
    if png is not None:
        parts += [f"![benchmark plot]({_rel(png, here)})", ""]
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():
        parts += [analysis.read_text().strip(), ""]
    parts += [
        f"Raw results (every run of every peer): [{js.name}]({_rel(js, here)}).",
        "",
        "## Setup",
        "",
        "Everything runs inside the test lab (`lab`), never in the machine's own network namespace: "
        "a *host* netns with a bridge (198.18.0.1/24) and one *instance* (its own net + mount namespaces, "
        "a veth on the bridge, 198.18.0.11). Servers run in the instance (iperf3 on 5201; a uvloop TCP echo "
        "server with 2 SO_REUSEPORT workers on 7000). Clients run in the host netns. Every proxy listens "
        "on 198.18.0.1 (its own port block, so all peers are up at once).",
        "",
        "| peer | what forwards | connects to |",
        "|---|---|---|",
        "| direct | nothing: the client talks to the instance address | 198.18.0.11 |",
        "| socat | `socat -b 131072 TCP-LISTEN:<p>,fork,reuseaddr TCP:<inst>:<port>` "
        "(UDP: `UDP-LISTEN:<p>,fork`, one child per client) in the host netns | 198.18.0.11 over the "
        "bridge (socat cannot enter a namespace) |",
        "| forkproxy | LXD 5.0.2's `lxd forkproxy -- <host-pid> -1 <listen> <instance-pid> -1 <connect> "
        "\"\" \"\" 0644 \"\" \"\" \"\"`, run directly (no LXD daemon), one process per device | "
        "127.0.0.1 inside the instance |",
        "| lxdproxy | the real daemon (`lxdproxy serve`) in the host netns; devices added with REST "
        "`PATCH /1.0/instances/bench` | 127.0.0.1 inside the instance |",
        "| lxdproxy-nat | the same daemon, `nat=true` devices: nftables DNAT in the host netns, the kernel "
        "forwards | 198.18.0.11 |",
        "",
        "## Workloads",
        "",
        f"- **Bulk**: `iperf3 -c <peer> -n {sizes['bulk_bytes']}` host→instance; receiver throughput "
        "(iperf3's server count, which stops at the end-of-test message, so bytes still buffered in a "
        "proxy are not counted). Note the paths differ: direct and NAT cross the veth (MTU 1500, with "
        "GRO/GSO); forkproxy and lxdproxy take loopback on both sides (client→proxy in the host netns, "
        "proxy→server inside the instance), as they do with LXD; socat takes loopback then the veth.",
        "- **CPU per GiB**: utime+stime (all threads, plus reaped children for socat's fork mode) of the "
        "forwarding process(es) from `/proc/<pid>/stat`, over the bulk run, ÷ GiB received. For "
        "lxdproxy that is the whole daemon. Not attributable for direct and NAT (kernel softirq time). "
        "The same counters over the connection-rate window and the UDP run give CPU µs per connection "
        "and per datagram received.",
        f"- **Connection rate**: {' and '.join(str(n) for n in sizes['connrate_clients'])} client "
        f"processes (one row each) for "
        f"{sizes['connrate_seconds']} s each do: connect, send 64 B, read the 64 B echo, close. "
        "TIME_WAIT reuse and a wide ephemeral range are set in the lab namespaces. The clients are "
        "Python processes on the same 2 cores, so the direct and NAT figures are bounded by them.",
        "- **Metrics row**: the bulk workload through lxdproxy again, right after its unscraped runs in "
        f"each round, while a thread does `GET /1.0/metrics` every {sizes['scrape_interval']:g} s over "
        "the unix socket (each scrape asks every worker for its counters).",
        f"- **Restart**: see *Restarts* above; {sizes['restart_trials']} trials per scenario, scenarios "
        "interleaved, each against its own daemon (or forkproxy) and port. forkproxy is started by a "
        "parent process of its own (standing in for LXD) and that parent gets the `kill -9`.",
        f"- **Latency**: one kept-open connection (TCP_NODELAY), {sizes['latency_requests']:,} sequential "
        "64 B request/response round trips after 100 warm-up ones; p50/p99 of the per-request time.",
        f"- **UDP**: `iperf3 -u -l 64 -b {sizes['udp_rate']} -t {sizes['udp_seconds']}` (offered load "
        "far above what any peer carries, so the sender runs flat out). Received pps = datagrams the "
        "iperf3 server in the instance got (its byte count ÷ 64) ÷ its receive time. **Loss** = 1 − "
        "received ÷ sent (the client's count); this includes drops anywhere (sender socket, proxy, "
        "receiver socket buffer). iperf3's own `lost_packets` only counts sequence gaps. Where they "
        "died: the growth of `Udp: RcvbufErrors` (/proc/net/snmp) in the host netns (the proxy's "
        "listening socket: nothing else receives UDP there) and in the instance (the iperf3 server's "
        "socket), as a share of the datagrams sent.",
        f"- **Device add**: {sizes['device_add_trials']} trials; the time from just before the "
        "add (REST PATCH for lxdproxy; spawning the process for forkproxy/socat, which have no API, "
        "so LXD's own REST + AppArmor + spawn path would only add to forkproxy's figure) to the first "
        "byte echoed back through the new forward, by a client retrying every 0.5 ms.",
        f"- **Memory**: a fresh lxdproxy daemon with {', '.join(str(n) for n in sizes['memory_devices'])}"
        " TCP devices (the last one is checked to forward); RSS of the daemon and every process under "
        f"it. forkproxy: {' and '.join(str(n) for n in fp_measured) or 'N'} real processes measured, "
        "then **extrapolated** to N devices as N × the mean RSS per process (LXD runs one per device). "
        "RSS counts shared pages of each forkproxy again; the JSON also has PSS.",
        "",
    ]
    if skipped or errors:
        parts += ["## Not run / errors", "", (skipped + errors).strip(), ""]
    return "\n".join(parts)
