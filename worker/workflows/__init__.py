"""Workflows the worker hosts out of the box: the Dapr workflow-management tutorial samples."""

from __future__ import annotations

from worker.hosting import WorkflowRegistry
from worker.workflows import approval, counter, tasks


def register(registry: WorkflowRegistry) -> None:
    for module in (approval, counter, tasks):
        module.register(registry)
