"""The benchmark harness runs every workload once, at a tiny size, against each peer, so it cannot
rot. No timing is asserted: only that each workload really moved data through that peer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import baseline, report, report_restart
from benchmarks.run import FLOORS, run_benchmarks, unavailable_peers, write_outputs
from benchmarks.sizes import SMOKE


def _results(**runs: dict[str, list[dict]]) -> dict:
    sizes = {"name": "t", "rounds": 3, "memory_devices": [1000]}
    return {"meta": {"sizes": sizes}, "peers": ["direct", "forkproxy", "lxdproxy"], "runs": runs,
            "device_add": {"lxdproxy": {"median_ms": 25.0}},
            "restart": {"trials": {"lxdproxy/kill9": [
                {"connects": 100, "refused": 2, "failed": 0, "held_breaks": 0, "longest_gap_ms": 50.0,
                 "held_longest_gap_ms": 30.0, "event_s": 1.0}]}},
            "memory": {"lxdproxy": {"1000": {"rss_kib": 90 * 1024}},
                       "forkproxy": {"1000": {"rss_kib": 36000 * 1024, "measured": False}}}}


def test_report_medians_ratios_and_targets() -> None:
    """Pure: medians ignore failed runs, ratios are value / reference, targets compare the right way."""
    results = _results(
        bulk={"direct": [{"gbit_s": 10.0}] * 3,
              "forkproxy": [{"gbit_s": 8.0}, {"gbit_s": 7.0}, {"error": "x"}, {"gbit_s": 9.0}],
              "lxdproxy": [{"gbit_s": 9.0}, {"gbit_s": 12.0}, {"gbit_s": 11.0}]},
        bulk_scraped={"lxdproxy": [{"gbit_s": 10.0, "scrapes": 3, "scrape_median_ms": 2.0,
                                    "scrape_max_ms": 5.0}]},
        connrate_2={"direct": [{"conn_s": 100.0}], "forkproxy": [{"conn_s": 50.0}],
                    "lxdproxy": [{"conn_s": 80.0}]},
        connrate_4={"direct": [{"conn_s": 100.0}], "forkproxy": [{"conn_s": 50.0}],
                    "lxdproxy": [{"conn_s": 70.0}]},
    )
    summary = report.summarize(results)
    assert summary["bulk"] == {"direct": 10.0, "forkproxy": 8.0, "lxdproxy": 11.0}
    assert summary["rss_1000"]["lxdproxy"] == 90.0
    table = report.markdown_table(results, summary).splitlines()
    bulk_row = next(r for r in table if r.startswith("| Bulk"))
    assert "| 11.0 (1.38× fp, 1.10× d) |" in bulk_row and "| 8.00 (0.80× d) |" in bulk_row
    assert not any(r.startswith("| UDP") for r in table)  # not run: no row
    restart = report_restart.summarize(results)
    targets = {r.split(" | ")[0][2:]: r.split(" | ")[-1] for r in
               report.targets_table(summary, restart=restart).splitlines()[2:]}
    assert targets["Bulk ≥ 1.15× forkproxy"] == "yes |"
    assert targets["Bulk ≥ 0.9× direct"] == "yes |"
    assert targets["Connection rate, 2 clients ≥ 1.5× forkproxy"] == "yes |"  # 1.6x
    assert targets["Connection rate, 4 clients ≥ 1.5× forkproxy"] == "**no** |"  # 1.4x
    # 10 scraped against a median of 11 unscraped: 0.91x
    assert targets["Bulk with `/1.0/metrics` scraped every 1 s ≥ 0.95× unscraped (same run)"] == "**no** |"
    assert targets["1,000 TCP devices, default workers ≤ 150 MB RSS (every process)"] == "yes |"
    assert targets["`kill -9` + restart of the control plane: 0 refused/failed connects"] == "**no** |"
    assert targets["`kill -9` + restart: 0 held-connection breaks"] == "yes |"
    assert targets["`lxdproxy reload`: 0 refused/failed connects"] == "not measured |"
    assert targets["Device add → first byte ≤ 20 ms (median)"] == "**no** |"
    assert targets["UDP 64 B received pps ≥ 1.5× forkproxy"] == "not measured |"
    assert "36,000 (extrapolated)" in report.memory_table(results)
    assert "| `/1.0/metrics` every 1 s | 10.0 (0.91×) | 10.0–10.0 | 3 |" in report.scrape_table(results)
    restart_rows = report_restart.table(results, restart).splitlines()
    assert any(r.startswith("| lxdproxy: `kill -9`") and "| 1 | 100 | 2 | 0 | 0 | 50 ms (50 ms) |" in r
               for r in restart_rows)


def test_baseline_targets_compare_with_the_baseline_peer_of_the_same_run() -> None:
    """Pure: the two CPU-per-GiB targets against ``--baseline`` read the lxdproxy-base column."""
    def targets(base: dict | None) -> dict[str, str]:
        runs = {"lxdproxy": [{"cpu_s_per_gib": 0.30, "path_cpu_s_per_gib": 1.0}]}
        if base is not None:
            runs["lxdproxy-base"] = [base]
        results = {"meta": {"sizes": {"memory_devices": []}}, "peers": list(runs), "runs": {"bulk": runs}}
        rows = report.targets_table(report.summarize(results)).splitlines()[2:]
        return {r.split(" | ")[0][2:]: r.split(" | ")[-1] for r in rows}

    cpu = "Proxy CPU per GiB (bulk) ≤ the `--baseline` commit's, same run"
    path = "Sender + proxy + receiver CPU per GiB ≤ the `--baseline` commit's, same run"
    got = targets({"cpu_s_per_gib": 0.35, "path_cpu_s_per_gib": 0.9})
    assert got[cpu] == "yes |" and got[path] == "**no** |"
    assert targets(None)[cpu] == "not measured |"


def test_baseline_extracts_a_commit_that_its_daemon_imports() -> None:
    """``git archive`` of the package, and PYTHONPATH wins over this checkout's editable install."""
    commit = baseline.resolve("HEAD")
    root = baseline.extract(commit)
    try:
        assert (root / "lxdproxy" / "__init__.py").is_file()
        # From this checkout (the tests' working directory), as the bench starts its daemons.
        assert (Path.cwd() / "lxdproxy").is_dir()
        done = subprocess.run([sys.executable, "-c", "import lxdproxy; print(lxdproxy.__file__)"],
                              capture_output=True, text=True, check=True,
                              **baseline.process_options(root))
        assert done.stdout.strip() == str(root / "lxdproxy" / "__init__.py")
    finally:
        baseline.cleanup(root)
    assert not root.exists()
    with pytest.raises(baseline.BaselineError, match="not a commit"):
        baseline.resolve("no-such-rev-anywhere")


@pytest.mark.lab
def test_baseline_peer_forwards_beside_the_current_daemon(lab) -> None:
    """``--baseline REV``: a second daemon running REV's code is a peer of the same run."""
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is absent (scripts/bootstrap --bench installs it)")
    why = unavailable_peers().get("lxdproxy")
    if why:
        pytest.skip(f"lxdproxy peer: {why}")

    results = run_benchmarks(lab, SMOKE, peers=["lxdproxy", "lxdproxy-base"], workloads_wanted=["bulk"],
                             baseline="HEAD", strict=True, log=lambda _msg: None)

    assert results["peers"] == ["lxdproxy", "lxdproxy-base"] and results["errors"] == []
    assert results["meta"]["baseline"] == baseline.resolve("HEAD")
    for peer in results["peers"]:
        (bulk,) = results["runs"]["bulk"][peer]
        assert bulk["bytes"] > 0 and bulk["cpu_s"] >= 0
        assert bulk["path_cpu_s_per_gib"] >= bulk["cpu_s_per_gib"]


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("peer", [p for p in report.PEER_ORDER if p not in FLOORS and p != "lxdproxy-base"])
def test_every_workload_runs_through(lab, tmp_path, peer: str) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is absent (scripts/bootstrap --bench installs it)")
    why = unavailable_peers().get(peer)
    if why:
        pytest.skip(f"{peer} peer: {why}")

    results = run_benchmarks(lab, SMOKE, peers=[peer], strict=True, log=lambda _msg: None)

    assert results["peers"] == [peer] and results["errors"] == []
    runs = results["runs"]
    (bulk,) = runs["bulk"][peer]
    # iperf3's receiver stops counting at the end-of-test message, so bytes still buffered in a
    # proxy are not counted: at 4 MiB that can be most of it. iperf3 -n stops after the block that
    # crosses the count, so up to one 128 KiB block more can arrive (seen through NAT).
    assert 0 < bulk["bytes"] <= (4 << 20) + (128 << 10) and bulk["gbit_s"] > 0
    if peer in ("socat", "forkproxy", "lxdproxy"):
        assert bulk["cpu_s"] >= 0
    assert bulk["sender_cpu_s_per_gib"] >= 0 and bulk["receiver_cpu_s_per_gib"] >= 0
    for n in SMOKE.connrate_clients:
        (conn,) = runs[f"connrate_{n}"][peer]
        assert conn["connections"] > 0 and conn["errors"] == 0 and conn["clients"] == n
        # (the echo server's share is in clock ticks: it can read 0 at this size)
        assert conn["machine_cpu_us_per_conn"] > 0 and conn["client_cpu_us_per_conn"] > 0
    if peer == "lxdproxy":
        (scraped,) = runs["bulk_scraped"][peer]
        assert scraped["gbit_s"] > 0 and scraped["scrapes"] >= 1
    else:
        assert "bulk_scraped" not in runs or peer not in runs["bulk_scraped"]
    if peer in ("forkproxy", "lxdproxy"):
        trials = results["restart"]["trials"]
        wanted = (["lxdproxy/kill9", "lxdproxy/reload", "lxdproxy-workers0/kill9"]
                  if peer == "lxdproxy" else ["forkproxy/kill9-parent"])
        assert sorted(trials) == sorted(wanted)
        for name in wanted:
            (trial,) = trials[name]
            assert trial["ok"] > 0 and trial["held_echoes"] > 0
        if peer == "lxdproxy":  # the in-process daemon's restart is an outage: the workload sees it
            assert trials["lxdproxy-workers0/kill9"][0]["held_breaks"] >= 1
    (lat,) = runs["latency"][peer]
    assert lat["requests"] == SMOKE.latency_requests and 0 < lat["p50_us"] <= lat["p99_us"]
    (udp,) = runs["udp"][peer]
    assert 0 < udp["received"] <= udp["sent"]
    assert udp["dropped_in_host_pct"] >= 0 and udp["dropped_in_instance_pct"] >= 0
    if peer != "direct":
        assert len(results["device_add"][peer]["samples_ms"]) == SMOKE.device_add_trials
    if peer in ("forkproxy", "lxdproxy"):
        mem = results["memory"][peer]
        assert all(mem[str(n)]["rss_kib"] > 0 for n in SMOKE.memory_devices)

    png = tmp_path / "b.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        png = None  # the plot needs the optional `bench` extra
    table = write_outputs(results, tmp_path / "b.md", tmp_path / "b.json", png)
    assert table.splitlines()[0] == f"| metric | unit | {peer} |"
    assert json.loads((tmp_path / "b.json").read_text())["peers"] == [peer]
    assert "## Results (medians)" in (tmp_path / "b.md").read_text()
    if png is not None:
        assert png.stat().st_size > 1000


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("peer", sorted(FLOORS))
def test_floor_peers_forward_the_echo_workloads(lab, peer: str) -> None:
    """The floors (benchmarks/floor/) really forward, and only the echo workloads run on them."""
    why = unavailable_peers().get(peer)
    if why:
        pytest.skip(f"{peer} peer: {why}")

    results = run_benchmarks(lab, SMOKE, peers=[peer], strict=True, log=lambda _msg: None)

    assert results["peers"] == [peer] and results["errors"] == []
    ran = {w for w, by_peer in results["runs"].items() if by_peer.get(peer)}
    assert ran == {f"connrate_{n}" for n in SMOKE.connrate_clients} | {"latency"}
    for n in SMOKE.connrate_clients:
        (conn,) = results["runs"][f"connrate_{n}"][peer]
        assert conn["connections"] > 0 and conn["errors"] == 0
        assert conn["cpu_user_us_per_conn"] >= 0 and conn["cpu_sys_us_per_conn"] > 0
    (lat,) = results["runs"]["latency"][peer]
    assert lat["requests"] == SMOKE.latency_requests and 0 < lat["p50_us"] <= lat["p99_us"]
    assert results["device_add"] == {} and results["restart"] == {}
