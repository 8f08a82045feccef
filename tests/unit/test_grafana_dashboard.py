"""The Grafana dashboard and the alert rules of docs/operate/metrics.md name only series the
worker exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from worker.telemetry.metrics import PrometheusInstruments, new_registry

PROJECT = Path(__file__).resolve().parents[2]
DASHBOARD = PROJECT / "docs" / "grafana" / "workflow-worker.json"
# A metric name in PromQL: an identifier right before a selector or a range ({ or [), or
# any name with one of the worker's prefixes that is not a label.
_SELECTED = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")
_OURS = re.compile(r"\b((?:workflow_worker|messaging|process|python)_[a-z0-9_]+)\b")
# Series Prometheus itself adds to every target.
_SCRAPE = {"up"}


def exposed() -> tuple[set[str], set[str]]:
    """Every sample name, and every label name, the worker's registry has once each
    instrument was used."""
    registry = new_registry(lambda: ({"RUNNING": 1}, 0))
    instruments = PrometheusInstruments(registry)
    instruments.message_received("t")
    instruments.in_flight("t", 1)
    instruments.message_handled("t", "drop", "invalid_message", 0.1)
    instruments.transient_attempt("t", "transient")
    instruments.sidecar_call("start", "ok", 0.1)
    instruments.status_event("started", "published")
    samples = [sample for metric in registry.collect() for sample in metric.samples]
    return {s.name for s in samples}, {label for s in samples for label in s.labels}


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in _expressions(item)]
    return []


def dashboard_expressions() -> list[str]:
    return _expressions(json.loads(DASHBOARD.read_text()))


def alert_expressions() -> list[str]:
    text = (PROJECT / "docs" / "operate" / "metrics.md").read_text()
    section = text.split("\n## What to alert on\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s+expr: (.+)$", section, re.MULTILINE)


def test_there_is_something_to_check() -> None:
    assert len(dashboard_expressions()) >= 15
    assert len(alert_expressions()) >= 5


@pytest.mark.parametrize("expr", dashboard_expressions() + alert_expressions())
def test_every_expression_names_only_exposed_series(expr: str) -> None:
    series, labels = exposed()
    names = set(_SELECTED.findall(expr)) | (set(_OURS.findall(expr)) - labels)
    assert names, f"no metric in {expr!r}"
    unknown = names - series - _SCRAPE
    assert not unknown, f"{expr!r} names series the worker does not expose: {unknown}"


def test_every_worker_series_is_on_the_dashboard() -> None:
    """A new series gets a panel (the process collector's are optional)."""
    shown = {n for e in dashboard_expressions() for n in _SELECTED.findall(e)}
    ours = {n for n in exposed()[0] if n.startswith(("workflow_worker_", "messaging_"))}
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in ours}
    missing = {f for f in families if not any(s.startswith(f) for s in shown)}
    assert not missing, f"series without a panel: {missing}"
