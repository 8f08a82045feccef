"""An invoice workflow and its activity, hosted by dapr-workflow-worker's image.

The worker imports this module (WORKER_WORKFLOW_MODULES='["my_flows"]', set in the
Containerfile beside it) and calls `register`: from then on a message on `workflow.start`
such as ``{"workflow": "invoice_workflow", "input": {"order_id": "o-1", "amount": 120}}``
starts it, and its `completed` event carries the invoice.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext

from worker.hosting import WorkflowRegistry


def make_invoice(ctx: WorkflowActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    amount = float(order["amount"])
    return {"order_id": order["order_id"], "amount": amount, "total": round(amount * 1.2, 2)}


def invoice_workflow(
    ctx: DaprWorkflowContext, order: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    invoice: dict[str, Any] = yield ctx.call_activity(make_invoice, input=order)
    return invoice


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(invoice_workflow)
    registry.activity(make_invoice)
