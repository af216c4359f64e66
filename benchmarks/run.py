"""`scripts/bench` / `python -m benchmarks`: every workload against every peer in one run, interleaved.

Each round runs every workload against every peer (peer order rotated per round, so no peer always
goes first after a quiet spell); tables show medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import baseline as baseline_code
from benchmarks import document, report, report_restart, restart, workloads
from benchmarks.daemon import LxdproxyDaemon, daemon_available
from benchmarks.env import IPERF_PORT, REPO, BenchEnv
from benchmarks.peers import (
    INSTANCE_NAME,
    LXD,
    CFloor,
    Direct,
    Floor,
    Forkproxy,
    Lxdproxy,
    LxdproxyBaseline,
    LxdproxyNat,
    Peer,
    PyFloor,
    Socat,
    floor_unavailable,
)
from benchmarks.sizes import BY_NAME, FULL, QUICK, Sizes

WORKLOADS: dict[str, Callable[[BenchEnv, Peer, Sizes], dict[str, Any]]] = {
    "bulk": workloads.bulk,
    "bulk_scraped": workloads.bulk_scraped,  # the metrics row: right after the unscraped bulk runs
    "connrate_2": partial(workloads.connrate, clients=2),
    "connrate_4": partial(workloads.connrate, clients=4),
    "latency": workloads.latency,
    "udp": workloads.udp,
    "udp_many": partial(workloads.udp, streams=8),  # 8 clients: sessions over the workers
}
ONLY_PEERS = {"bulk_scraped": ("lxdproxy",)}
EXTRA_WORKLOADS = ("device_add", "memory", "restart")


def _wanted(workload: str, chosen: list[str], sizes: Sizes) -> bool:
    """``--workloads connrate`` selects every connrate_N; connrate_N runs for the N in sizes."""
    family, _, clients = workload.partition("_")
    if family == "connrate" and int(clients) not in sizes.connrate_clients:
        return False
    return workload in chosen or family in chosen


def _applies(workload: str, peer: str) -> bool:
    if peer in FLOORS and workload not in Floor.WORKLOADS:
        return False
    return peer in ONLY_PEERS.get(workload, (peer,))
BASE_PORTS = {"direct": 0, "socat": 11000, "forkproxy": 12000, "lxdproxy": 13000, "lxdproxy-nat": 14000,
              "c-floor": 16000, "py-floor": 17000, "lxdproxy-base": 18000}  # 15000: restart.BASE_PORT
FLOORS = {"c-floor": CFloor, "py-floor": PyFloor}
DAEMON_PEERS = ("lxdproxy", "lxdproxy-nat")  # the peers this checkout's one daemon serves
IPERF_PORTS = {name: IPERF_PORT + i for i, name in enumerate(report.PEER_ORDER)}


def unavailable_peers() -> dict[str, str]:
    """peer -> why it cannot run on this machine."""
    out: dict[str, str] = {}
    if not os.path.exists(LXD):
        out["forkproxy"] = f"{LXD} is absent (scripts/bootstrap --bench installs Debian's lxd)"
    floor = floor_unavailable()
    if floor:
        out["c-floor"] = floor
    reason = daemon_available()
    if reason:
        out["lxdproxy"] = out["lxdproxy-nat"] = reason
    return out


def _make_peer(name: str, env: BenchEnv, daemon: LxdproxyDaemon | None,
               base_daemon: LxdproxyDaemon | None = None) -> Peer:
    base, iperf = BASE_PORTS[name], IPERF_PORTS[name]
    if name == "direct":
        return Direct(env, base, iperf_port=iperf)
    if name == "socat":
        return Socat(env, base, iperf_port=iperf)
    if name == "forkproxy":
        return Forkproxy(env, base, iperf_port=iperf)
    if name in FLOORS:
        return FLOORS[name](env, base, iperf_port=iperf)
    if name == "lxdproxy-base":
        assert base_daemon is not None
        return LxdproxyBaseline(env, base, base_daemon, iperf_port=iperf)
    assert daemon is not None
    return (LxdproxyNat if name == "lxdproxy-nat" else Lxdproxy)(env, base, daemon, iperf_port=iperf)


def _meta(sizes: Sizes) -> dict[str, Any]:
    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "git": cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "lxd": cmd([LXD, "--version"]) if os.path.exists(LXD) else None,
        "iperf3": (cmd(["iperf3", "--version"]).splitlines() or [None])[0],
        "socat": (cmd(["socat", "-V"]).splitlines()[1:2] or [None])[0],
        "loadavg_start": os.getloadavg(),
        "sizes": asdict(sizes),
    }


def run_benchmarks(lab: Any, sizes: Sizes, *, peers: list[str] | None = None,
                   workloads_wanted: list[str] | None = None, strict: bool = False,
                   baseline: str | None = None,
                   log: Callable[[str], None] = print,
                   serve_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run everything inside ``lab`` (a lab.Lab); returns the raw results (JSON-ready).
    strict: a failing run raises instead of being recorded as an error (the smoke test uses it).
    baseline: a commit whose lxdproxy runs as the peer ``lxdproxy-base`` (benchmarks.baseline)."""
    unavailable = unavailable_peers()
    if not baseline:
        unavailable["lxdproxy-base"] = "no --baseline REV given"
    wanted = peers or [p for p in report.PEER_ORDER if baseline or p != "lxdproxy-base"]
    skipped = {p: unavailable[p] for p in wanted if p in unavailable}
    names = [p for p in wanted if p not in unavailable]
    chosen = workloads_wanted or [*WORKLOADS, *EXTRA_WORKLOADS]
    results: dict[str, Any] = {"meta": {**_meta(sizes), "serve_args": list(serve_args)},
                               "peers": [], "skipped": skipped, "runs": {},
                               "device_add": {}, "memory": {}, "restart": {}, "errors": []}
    env = BenchEnv(lab)
    env.start_servers(tuple(IPERF_PORTS[p] for p in names))
    daemon = base_daemon = None
    base_source = None
    started: list[Peer] = []
    try:
        if "lxdproxy-base" in names:
            assert baseline is not None
            try:
                commit = baseline_code.resolve(baseline)
                results["meta"]["baseline"] = commit
                base_source = baseline_code.extract(commit)
                base_daemon = LxdproxyDaemon(lab, label="base", source=base_source)
                base_daemon.start()
                base_daemon.add_instance(INSTANCE_NAME, env.inst)
            except Exception as exc:
                if strict:
                    raise
                names.remove("lxdproxy-base")
                skipped["lxdproxy-base"] = f"baseline {baseline}: {exc}"
        if any(p in DAEMON_PEERS for p in names):
            daemon = LxdproxyDaemon(lab, extra_args=serve_args)
            try:
                daemon.start()
                daemon.add_instance(INSTANCE_NAME, env.inst)
            except Exception as exc:
                if strict:
                    raise
                for name in [p for p in names if p in DAEMON_PEERS]:
                    names.remove(name)
                    skipped[name] = f"daemon did not start: {exc}"
        for name in names:
            peer = _make_peer(name, env, daemon, base_daemon)
            try:
                peer.start()
            except Exception as exc:
                if strict:
                    raise
                peer.stop()
                skipped[name] = f"failed to start: {exc}"
                continue
            started.append(peer)
        results["peers"] = names = [p.name for p in started]
        results["runs"] = {w: {p: [] for p in names if _applies(w, p)}
                           for w in WORKLOADS if _wanted(w, chosen, sizes)}
        if not started:
            raise RuntimeError(f"no peer could run: {skipped}")
        log(f"peers up: {', '.join(names)}" + (f"; skipped: {skipped}" if skipped else ""))

        def attempt(what: str, fn: Callable[[], Any]) -> Any:
            t0 = time.monotonic()
            try:
                res = fn()
            except Exception as exc:
                if strict:
                    raise
                results["errors"].append(f"{what}: {exc}")
                log(f"  {what}: ERROR {exc}")
                return {"error": str(exc)}
            log(f"  {what}: {_brief(res)} [{time.monotonic() - t0:.1f}s]")
            return res

        for rnd in range(sizes.rounds):
            log(f"round {rnd + 1}/{sizes.rounds} (load average {os.getloadavg()[0]:.2f})")
            results["meta"].setdefault("loadavg_rounds", []).append(os.getloadavg())
            order = started[rnd % len(started):] + started[:rnd % len(started)]
            for wname, fn in WORKLOADS.items():
                if wname not in results["runs"]:
                    continue
                # the scraped bulk is compared with the unscraped: as many samples of each
                repeats = sizes.bulk_repeats if wname in ("bulk", "bulk_scraped") else 1
                for _ in range(repeats):
                    for peer in [p for p in order if _applies(wname, p.name)]:
                        res = attempt(f"{wname} {peer.name}",
                                      lambda fn=fn, peer=peer: fn(env, peer, sizes))  # type: ignore[misc]
                        results["runs"][wname][peer.name].append(res)
        if "device_add" in chosen:
            for peer in started:
                if peer.adds_forwards:
                    results["device_add"][peer.name] = attempt(
                        f"device_add {peer.name}", lambda peer=peer: workloads.device_add(env, peer, sizes))
        if "memory" in chosen:
            if "lxdproxy" in names:
                results["memory"]["lxdproxy"] = attempt(
                    "memory lxdproxy", lambda: workloads.memory_lxdproxy(env, sizes))
            if "forkproxy" in names:
                results["memory"]["forkproxy"] = attempt(
                    "memory forkproxy", lambda: workloads.memory_forkproxy(env, sizes))
        if "restart" in chosen and ({"lxdproxy", "forkproxy"} & set(names)):
            results["restart"] = attempt("restart", lambda: restart.restart(
                env, sizes, lxdproxy="lxdproxy" in names, forkproxy="forkproxy" in names))
    finally:
        for peer in started:
            peer.stop()
        if daemon is not None:
            if results["errors"]:
                results["daemon_log_tail"] = daemon.log_tail()
            daemon.stop()
        if base_daemon is not None:
            base_daemon.stop()
        if base_source is not None:
            baseline_code.cleanup(base_source)
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def _brief(res: Any) -> str:
    if not isinstance(res, dict):
        return str(res)
    keys = ("gbit_s", "cpu_s_per_gib", "conn_s", "cpu_us_per_conn", "p50_us", "p99_us", "rx_pps",
            "loss_pct", "cpu_us_per_datagram", "median_ms")
    shown = {k: res[k] for k in keys if res.get(k) is not None}
    if "trials" in res:
        return "; ".join(f"{name}: refused {sum(t['refused'] for t in ts)}, failed "
                         f"{sum(t['failed'] for t in ts)}, held breaks {sum(t['held_breaks'] for t in ts)}, "
                         f"gap {max(t['longest_gap_ms'] for t in ts):.0f} ms"
                         for name, ts in res["trials"].items())
    if not shown:
        shown = {n: round(v["rss_kib"] / 1024, 1) for n, v in res.items() if isinstance(v, dict)}
    return ", ".join(f"{k}={report.fmt(v)}" for k, v in shown.items())


def write_outputs(results: dict[str, Any], md: Path, js: Path, png: Path | None) -> str:
    summary = report.summarize(results)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if png is not None:
        report.plot(results, summary, png)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(document.document(results, summary, png=png, js=js, md=md))
    restart_summary = report_restart.summarize(results)
    return "\n\n".join(t for t in (report.markdown_table(results, summary),
                                    report.targets_table(summary, restart=restart_summary),
                                    report_restart.table(results, restart_summary),
                                    report.scrape_table(results)) if t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (a few minutes)")
    p.add_argument("--size", choices=sorted(BY_NAME), help="size preset (default full; --quick = quick)")
    p.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    p.add_argument("--peers", help=f"comma list, default all of {','.join(report.PEER_ORDER)}")
    p.add_argument("--workloads", help=f"comma list, default all of "
                                       f"{','.join([*WORKLOADS, *EXTRA_WORKLOADS])}")
    p.add_argument("--out", type=Path, help="directory for benchmarks.md/.json/.png (default: the "
                   "full run records into docs/ and docs/img/; other sizes into "
                   "benchmarks/results/<size>/, which git ignores)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--baseline", metavar="REV",
                   help="also run the lxdproxy of this commit (peer lxdproxy-base), beside this "
                        "checkout's, so targets against earlier code are measured in the same run")
    p.add_argument("--serve-arg", action="append", default=[], metavar="FLAG",
                   help="an extra `lxdproxy serve` flag for the lxdproxy peers (repeatable), "
                        "e.g. --serve-arg=--no-udp-spread")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="run nothing: write the document (and plot) again from recorded raw results, "
                        "e.g. after editing benchmarks/analysis.md")
    args = p.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        md, png = args.render.parent / "benchmarks.md", args.render.with_suffix(".png")
        if args.render.resolve() == (REPO / "docs/img/benchmarks.json").resolve():
            md = REPO / "docs/benchmarks.md"
        print(write_outputs(results, md, args.render, None if args.no_plot else png))
        return 0
    if os.geteuid() != 0:
        print("scripts/bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    sizes = BY_NAME[args.size] if args.size else (QUICK if args.quick else FULL)
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    if args.out:
        md, js, png = args.out / "benchmarks.md", args.out / "benchmarks.json", args.out / "benchmarks.png"
    elif sizes is FULL or (sizes.name == "full"):
        md, js, png = (REPO / "docs/benchmarks.md", REPO / "docs/img/benchmarks.json",
                       REPO / "docs/img/benchmarks.png")
    else:
        out = REPO / "benchmarks/results" / sizes.name
        md, js, png = out / "benchmarks.md", out / "benchmarks.json", out / "benchmarks.png"
    from lab import Lab

    with Lab() as lab:
        results = run_benchmarks(lab, sizes, peers=args.peers.split(",") if args.peers else None,
                                 workloads_wanted=args.workloads.split(",") if args.workloads else None,
                                 baseline=args.baseline, serve_args=tuple(args.serve_arg))
    table = write_outputs(results, md, js, None if args.no_plot else png)
    print()
    print(table)
    print(f"\nwrote {md.relative_to(REPO) if md.is_relative_to(REPO) else md}, {js.name}"
          + ("" if args.no_plot else f", {png.name}"))
    for err in results["errors"]:
        print(f"error: {err}", file=sys.stderr)
    return 0
