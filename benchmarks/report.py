"""Raw results -> medians, ratios against forkproxy and direct, a markdown report and a PNG plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report_restart

PEER_ORDER = ["direct", "socat", "forkproxy", "lxdproxy", "lxdproxy-nat", "c-floor", "py-floor",
              "lxdproxy-base"]
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
    Metric("sender_per_gib", "bulk", "sender_cpu_s_per_gib", "iperf3 sender's CPU per GiB (bulk)",
           "CPU s/GiB", False),
    Metric("receiver_per_gib", "bulk", "receiver_cpu_s_per_gib", "iperf3 receiver's CPU per GiB (bulk)",
           "CPU s/GiB", False),
    Metric("path_per_gib", "bulk", "path_cpu_s_per_gib",
           "Sender + proxy + receiver CPU per GiB (bulk)", "CPU s/GiB", False),
    Metric("conn_rate_2", "connrate_2", "conn_s", "Connection rate, 2 clients (64 B req/resp)",
           "conn/s", True),
    Metric("conn_rate_4", "connrate_4", "conn_s", "Connection rate, 4 clients (64 B req/resp)",
           "conn/s", True),
    Metric("cpu_per_conn_2", "connrate_2", "cpu_us_per_conn", "Proxy CPU per connection, 2 clients",
           "CPU µs", False),
    Metric("cpu_per_conn_4", "connrate_4", "cpu_us_per_conn", "Proxy CPU per connection, 4 clients",
           "CPU µs", False),
    Metric("cpu_user_per_conn_2", "connrate_2", "cpu_user_us_per_conn",
           "Proxy CPU per connection in user space, 2 clients", "CPU µs", False),
    Metric("cpu_sys_per_conn_2", "connrate_2", "cpu_sys_us_per_conn",
           "Proxy CPU per connection in the kernel (system calls), 2 clients", "CPU µs", False),
    Metric("conn_machine_2", "connrate_2", "machine_cpu_us_per_conn",
           "Machine CPU per connection (every process and the kernel), 2 clients", "CPU µs", False),
    Metric("conn_machine_4", "connrate_4", "machine_cpu_us_per_conn",
           "Machine CPU per connection (every process and the kernel), 4 clients", "CPU µs", False),
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
    Metric("udp_many_pps", "udp_many", "rx_pps", "UDP 64 B received, 8 clients", "pps", True),
    Metric("udp_many_loss", "udp_many", "loss_pct", "UDP 64 B loss, 8 clients", "%", False),
    Metric("cpu_per_dgram_many", "udp_many", "cpu_us_per_datagram",
           "Proxy CPU per UDP datagram received, 8 clients", "CPU µs", False),
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
    Target("Bulk ≥ 1.15× forkproxy", "bulk", "forkproxy", 1.15, True),
    Target("Bulk ≥ 0.9× direct", "bulk", "direct", 0.9, True),
    Target("Proxy CPU per GiB (bulk) ≤ 0.22 s", "cpu_per_gib", None, 0.22, False),
    # The 0.22 s was the code of its day measured on its day: `--baseline REV` runs that code in
    # this run, where the comparison means something.
    Target("Proxy CPU per GiB (bulk) ≤ the `--baseline` commit's, same run", "cpu_per_gib",
           "lxdproxy-base", 1.0, False),
    Target("Sender + proxy + receiver CPU per GiB ≤ the `--baseline` commit's, same run", "path_per_gib",
           "lxdproxy-base", 1.0, False),
    Target("Bulk with `/1.0/metrics` scraped every 1 s ≥ 0.95× unscraped (same run)", "bulk_scraped",
           "lxdproxy", 0.95, True, ref_key="bulk"),
    Target("Connection rate, 2 clients ≥ 1.5× forkproxy", "conn_rate_2", "forkproxy", 1.5, True),
    Target("Connection rate, 4 clients ≥ 1.5× forkproxy", "conn_rate_4", "forkproxy", 1.5, True),
    Target("Latency p99 no worse than forkproxy (≤ 1.0×)", "lat_p99", "forkproxy", 1.0, False),
    Target("UDP 64 B received pps ≥ 1.5× forkproxy", "udp_pps", "forkproxy", 1.5, True),
    Target("UDP 64 B loss lower than forkproxy's (< 1.0×)", "udp_loss", "forkproxy", 0.999, False),
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


def memory_breakdown(results: dict[str, Any]) -> str:
    """One line per device count: RSS of the control plane and of each worker."""
    lines = []
    for n, point in sorted(((int(k), v) for k, v in results.get("memory", {}).get("lxdproxy", {}).items()
                            if k.isdigit() and isinstance(v, dict) and v.get("by_process"))):
        parts = []
        for i, proc in enumerate(point["by_process"]):  # daemon.pids(): the control plane first
            role = "control plane" if i == 0 else "worker" if (
                "worker_main" in proc["cmd"] or "--generation" in proc["cmd"]) else proc["cmd"][:40]
            parts.append(f"{role} {fmt(proc['rss_kib'] / MB)} (PSS {fmt(proc['pss_kib'] / MB)})")
        lines.append(f"- {n:,} device{'s' if n != 1 else ''}, MiB RSS: " + ", ".join(parts))
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
