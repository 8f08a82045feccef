"""A never-ending counter: counts up once per interval, then continues as new.

Input: an int (the start value) or {"counter": int, "interval_seconds": number (default 1)}.
Made for trying suspend, resume, terminate and purge.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext

from worker.hosting import WorkflowRegistry


def counter_workflow(ctx: DaprWorkflowContext, state: Any) -> Generator[Any, Any, None]:
    if isinstance(state, dict):
        counter, interval = int(state.get("counter", 0)), float(state.get("interval_seconds", 1))
    else:
        counter, interval = int(state or 0), 1.0
    ctx.set_custom_status(str(counter))
    yield ctx.create_timer(timedelta(seconds=interval))
    ctx.continue_as_new({"counter": counter + 1, "interval_seconds": interval})


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(counter_workflow)
