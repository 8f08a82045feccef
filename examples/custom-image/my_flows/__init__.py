"""An invoice workflow and its activity, hosted by dapr-workflow-worker's image.

The worker imports this module (WORKER_WORKFLOW_MODULES='["my_flows"]', set in the
Containerfile beside it) and registers its `flows`: from then on a message on `workflow.start`
such as ``{"workflow": "invoice_workflow", "input": {"order_id": "o-1", "amount": 120}}``
starts it, and its `completed` event carries the invoice. An input that is not an `Order`
(no amount, say) is rejected before anything runs. Tested in tests/, without a sidecar.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext
from pydantic import BaseModel, Field

from dapr_workflow_worker import Flows

flows = Flows()


class Order(BaseModel):
    order_id: str
    amount: float = Field(gt=0)


class Invoice(BaseModel):
    order_id: str
    amount: float
    total: float


@flows.activity
def make_invoice(ctx: WorkflowActivityContext, order: Order) -> Invoice:
    return Invoice(order_id=order.order_id, amount=order.amount, total=round(order.amount * 1.2, 2))


@flows.workflow(name="invoice_workflow")
def invoice_workflow(ctx: DaprWorkflowContext, order: Order) -> Generator[Any, Any, Any]:
    invoice = yield ctx.call_activity(make_invoice, input=order)
    return invoice
