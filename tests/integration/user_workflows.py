"""A user's own workflow module, loaded through WORKER_WORKFLOW_MODULES (as users do)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext

from worker.hosting import WorkflowRegistry


def greeting_workflow(ctx: DaprWorkflowContext, name: Any) -> str:
    return f"hello, {name}"


def failing_workflow(ctx: DaprWorkflowContext, message: Any) -> None:
    raise RuntimeError(str(message or "boom"))


def slow_step(ctx: WorkflowActivityContext, seconds: float) -> str:
    time.sleep(seconds)  # an activity doing real work for a while
    return "slow step done"


def slow_workflow(ctx: DaprWorkflowContext, seconds: Any) -> Generator[Any, Any, str]:
    result: str = yield ctx.call_activity(slow_step, input=float(seconds or 1))
    return result


def waiting_workflow(ctx: DaprWorkflowContext, _: Any) -> Generator[Any, Any, Any]:
    """Waits for the event `go` and returns its data (whatever the input: the dapr CLI
    passes its --input as given)."""
    data = yield ctx.wait_for_external_event("go")
    return data


def big_output_workflow(ctx: DaprWorkflowContext, size: Any) -> str:
    return "x" * int(size)


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(greeting_workflow)
    registry.workflow(failing_workflow)
    registry.workflow(slow_workflow)
    registry.activity(slow_step)
    registry.workflow(big_output_workflow)
    registry.workflow(waiting_workflow)
