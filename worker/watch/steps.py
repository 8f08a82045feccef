"""What the watch reads in an instance's history: steps still in flight, events raised."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.events import TimelineEntry
from worker.timeline import PENDING, build_timeline

# Steps that wait on something the engine must answer (a timer or an external event is
# waited on by design, for as long as it takes).
_STEPS = frozenset({"activity", "report", "child_workflow"})


def pending_steps(history: Sequence[Any]) -> list[TimelineEntry]:
    """Activities (the worker's own report activity too) and child workflows not answered yet,
    oldest first."""
    return [e for e in build_timeline(history) if e.kind in _STEPS and e.outcome == PENDING]


def raised_events(history: Sequence[Any]) -> list[TimelineEntry]:
    """Every event raised into the instance, oldest first."""
    return [e for e in build_timeline(history) if e.kind == "event_raised"]
