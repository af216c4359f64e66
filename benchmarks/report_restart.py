"""Restart workload results -> per-scenario figures, a markdown table, and the rows targets use."""

from __future__ import annotations

import statistics
from typing import Any

TITLES = {
    "lxdproxy/kill9": "lxdproxy: `kill -9` of the control plane + `lxdproxy serve` again",
    "lxdproxy/reload": "lxdproxy: `lxdproxy reload` (new workers, old ones drain)",
    "lxdproxy-workers0/kill9": "lxdproxy `--workers 0`: `kill -9` + `lxdproxy serve` again",
    "forkproxy/kill9-parent": "forkproxy: `kill -9` of its parent (forkproxy left alone)",
}


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """scenario -> totals over its trials (refused, failed, held breaks) and worst/median gaps."""
    trials = (results.get("restart") or {}).get("trials") or {}
    out: dict[str, dict[str, float]] = {}
    for name, runs in trials.items():
        if not runs:
            continue
        gaps = [r["longest_gap_ms"] for r in runs]
        out[name] = {
            "trials": len(runs),
            "connects": sum(r["connects"] for r in runs),
            "refused": sum(r["refused"] for r in runs),
            "failed": sum(r["failed"] for r in runs),
            "held_breaks": sum(r["held_breaks"] for r in runs),
            "gap_max_ms": max(gaps),
            "gap_median_ms": statistics.median(gaps),
            "held_gap_max_ms": max(r["held_longest_gap_ms"] for r in runs),
            "event_median_s": statistics.median(r["event_s"] for r in runs),
        }
    return out


def target_rows(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Rows in the shape of report.summarize (key -> peer -> value) for the targets table:
    refused + failed connects and held-connection breaks, summed over the trials."""
    rows: dict[str, dict[str, float | None]] = {}
    for name, s in summary.items():
        peer, _, scenario = name.partition("/")
        rows.setdefault(f"restart_{scenario}_lost", {})[peer] = s["refused"] + s["failed"]
        rows.setdefault(f"restart_{scenario}_breaks", {})[peer] = s["held_breaks"]
    return rows


def table(results: dict[str, Any], summary: dict[str, dict[str, float]]) -> str:
    if not summary:
        return ""
    lines = ["| scenario | trials | connects | refused | failed | held-connection breaks | longest gap "
             "between successful connects, worst (median) | longest gap between held echoes, worst | "
             "event took (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in [*TITLES, *[n for n in summary if n not in TITLES]]:
        s = summary.get(name)
        if s is None:
            continue
        lines.append(f"| {TITLES.get(name, name)} | {s['trials']:.0f} | {s['connects']:,.0f} | "
                     f"{s['refused']:.0f} | {s['failed']:.0f} | {s['held_breaks']:.0f} | "
                     f"{s['gap_max_ms']:.0f} ms ({s['gap_median_ms']:.0f} ms) | "
                     f"{s['held_gap_max_ms']:.0f} ms | {s['event_median_s']:.2f} s |")
    for name, note in ((results.get("restart") or {}).get("notes") or {}).items():
        lines.append(f"| {name}: {note} | – | – | – | – | – | – | – | – |")
    return "\n".join(lines)
