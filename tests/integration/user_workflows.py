"""A user's own workflow module, loaded through WORKER_WORKFLOW_MODULES (as users do)."""

from __future__ import annotations

from typing import Any

from dapr.ext.workflow import DaprWorkflowContext

from worker.hosting import WorkflowRegistry


def greeting_workflow(ctx: DaprWorkflowContext, name: Any) -> str:
    return f"hello, {name}"


def failing_workflow(ctx: DaprWorkflowContext, message: Any) -> None:
    raise RuntimeError(str(message or "boom"))


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(greeting_workflow)
    registry.workflow(failing_workflow)
