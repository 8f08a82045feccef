"""An order approval: orders above a threshold wait for a human decision, raced against a timer.

Input: {"order_id": str, "amount": number, "approval_threshold": number (default 1000),
"approval_timeout_seconds": number (default 3600)}. The decision arrives as the external
event ``approval_decision`` with data ``true``/``false`` or ``{"approved": bool, ...}``.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext, when_any

from worker.hosting import WorkflowRegistry

APPROVAL_EVENT = "approval_decision"


def _approved(decision: Any) -> bool:
    if isinstance(decision, dict):
        return bool(decision.get("approved", False))
    return decision is True or (isinstance(decision, str) and decision.lower() == "approved")


def approval_workflow(ctx: DaprWorkflowContext, order: dict[str, Any]) -> Generator[Any, Any, Any]:
    amount = float(order.get("amount", 0))
    threshold = float(order.get("approval_threshold", 1000))
    if amount > threshold:
        timeout = timedelta(seconds=float(order.get("approval_timeout_seconds", 3600)))
        ctx.set_custom_status("waiting for approval")
        decision_task = ctx.wait_for_external_event(APPROVAL_EVENT)
        timer = ctx.create_timer(timeout)
        winner = yield when_any([decision_task, timer])
        if winner is timer:
            return {
                "order_id": order.get("order_id"),
                "status": "rejected",
                "reason": "approval timed out",
            }
        decision = decision_task.get_result()
        if not _approved(decision):
            return {
                "order_id": order.get("order_id"),
                "status": "rejected",
                "reason": "rejected by approver",
                "decision": decision,
            }
    ctx.set_custom_status("processing")
    receipt = yield ctx.call_activity(process_order, input=order)
    return {"order_id": order.get("order_id"), "status": "approved", "receipt": receipt}


def process_order(ctx: WorkflowActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": order.get("order_id"), "charged": order.get("amount")}


def register(registry: WorkflowRegistry) -> None:
    registry.workflow(approval_workflow)
    registry.activity(process_order)
