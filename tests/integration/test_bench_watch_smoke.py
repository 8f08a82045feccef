"""The watch's benchmark keeps working end to end (its smoke mode; figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scripts import devstack
from worker.watch.watcher import _LIST_PAGE


def test_bench_watch_smoke_mode_produces_its_report(tmp_path: Path) -> None:
    script = devstack.PROJECT / "scripts" / "bench_watch.py"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=devstack.PROJECT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "watch.json").read_text())

    timeliness = report["timeliness"]
    assert set(timeliness["actions"]) == {
        "run",
        "suspend",
        "resume",
        "raise-event",
        "terminate",
        "suspend ours",
        "resume ours",
        "terminate ours",
        "resume what the worker suspended",
        "rerun",
        "purge",
    }
    for action, figures in timeliness["actions"].items():
        assert figures["received"] > 0, action
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["max_ms"], action
    assert timeliness["retention"]["started_by_client"]["count"] > 0
    assert timeliness["audit"]["instances"] > 0

    cost = report["cost"]
    steady = cost["windows"]["steady"]
    assert steady["calls"]["ListInstanceIDs"] >= 1  # the sweep lists the instances
    assert steady["sweeps"] >= 1 and steady["sweep_s"]["max"] is not None
    assert steady["cpu_s"]["worker"] >= 0
    assert "ListInstanceIDs" in steady["model"]
    baseline = cost["windows"]["baseline"]
    assert "ListInstanceIDs" not in baseline["calls"]  # the watch is off there
    # started + completed of each finished one, started of each running one, and the changes
    # made with all of them in place
    assert cost["audit"]["events_expected"] > 2 * cost["finished"] + cost["running"]
    assert set(cost["under_load"]) == {"suspend", "purge"}
    assert [r["page_size"] for r in cost["listing"]] == sorted({500, 2000, _LIST_PAGE, 20_000})

    table = (tmp_path / "watch.md").read_text()
    assert "p95 ms" in table and "sidecar calls/min" in table
