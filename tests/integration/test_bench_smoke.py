"""The benchmark harness runs every workload once, at a tiny size, against each peer, so it cannot
rot. No timing is asserted: only that each workload really moved data through that peer."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import report
from benchmarks.run import run_benchmarks, unavailable_peers, write_outputs
from benchmarks.sizes import SMOKE

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.mark.parametrize("peer", report.PEER_ORDER)
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
    # proxy are not counted: at 4 MiB that can be most of it
    assert 0 < bulk["bytes"] <= 4 << 20 and bulk["gbit_s"] > 0
    if peer in ("socat", "forkproxy", "lxdproxy"):
        assert bulk["cpu_s"] >= 0
    (conn,) = runs["connrate"][peer]
    assert conn["connections"] > 0 and conn["errors"] == 0
    (lat,) = runs["latency"][peer]
    assert lat["requests"] == SMOKE.latency_requests and 0 < lat["p50_us"] <= lat["p99_us"]
    (udp,) = runs["udp"][peer]
    assert 0 < udp["received"] <= udp["sent"]
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
