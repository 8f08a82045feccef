"""Task processing: fan out one activity per task, fan in the results.

Input: {"tasks": ["a", "b", ...]}. A task whose name starts with "fail" raises, so the
workflow fails: useful to see a `failed` status event.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext, when_all

from worker.hosting import WorkflowRegistry


class TaskFailed(Exception):
    """A task could not be processed."""


def task_processing_workflow(
    ctx: DaprWorkflowContext, job: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    tasks = [str(t) for t in (job or {}).get("tasks", [])]
    results = yield when_all([ctx.call_activity(process_task, input=t) for t in tasks])
    return {"processed": len(results), "results": results}


def process_task(ctx: WorkflowActivityContext, task: str) -> str:
    if task.startswith("fail"):
        raise TaskFailed(f"task {task!r} failed on purpose")
    return task.upper()


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(task_processing_workflow)
    registry.activity(process_task)
