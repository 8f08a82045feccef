"""The benchmark script keeps working (its small smoke mode; figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scripts import devstack


def _benchmark(*args: str, script: str = "benchmark.py") -> None:
    result = subprocess.run(
        [sys.executable, str(devstack.PROJECT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=devstack.PROJECT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_benchmark_smoke_mode_produces_its_report(tmp_path: Path) -> None:
    _benchmark("--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "results.json").read_text())
    assert {row["profile"] for row in report["medians"]} == {"default", "redis"}
    for run in report["runs"]:
        for phase in ("direct", "worker", "flow", "pubsub"):
            assert run[phase]["throughput"] > 0
            assert 0 < run[phase]["p50_ms"] <= run[phase]["p99_ms"]
        assert run["peak_rss_mb"] > 0
        for phase in ("direct", "worker"):  # where the CPU went: each process of the stack
            spent = run[phase]["cpu_s"]
            assert spent["bench-host"] > 0 and spent["scheduler"] > 0
            assert any(name.startswith("daprd") and s > 0 for name, s in spent.items())
    assert (tmp_path / "benchmark.png").stat().st_size > 10_000
    table = (tmp_path / "results.md").read_text()
    assert "worker/direct" in table and "direct/worker by CPU" in table


def test_benchmark_paced_mode_produces_its_report(tmp_path: Path) -> None:
    _benchmark(
        "--paced", "10", "10", "--runs", "1", "--profiles", "default", "--out", str(tmp_path)
    )
    (run,) = json.loads((tmp_path / "paced.json").read_text())["runs"]
    for side in ("direct", "worker"):
        assert 0 < run[side]["p50_ms"] <= run[side]["p99_ms"]
    assert "added p99" in (tmp_path / "paced.md").read_text()


def test_call_rates_mode_produces_its_report(tmp_path: Path) -> None:
    _benchmark(
        "--n", "20", "--profiles", "default", "--out", str(tmp_path), script="bench_calls.py"
    )
    (result,) = json.loads((tmp_path / "calls.json").read_text())["results"]
    assert set(result["rates"]) == {"save first-write", "save", "publish", "start", "get instance"}
    assert all(rate > 0 for rate in result["rates"].values())
    # The whole path includes the pub/sub legs, so its bound is the lower one.
    bounds = result["bounds"]
    assert 0 < bounds["worker_path"] < bounds["pubsub_legs_only"] < 1
    assert bounds["worker_path"] < bounds["existence_check_only"] < 1
    assert "bound: worker path" in (tmp_path / "calls.md").read_text()
