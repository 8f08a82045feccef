"""A plugin module declared with `dapr_workflow_worker.Flows`, its input typed with pydantic:
loaded through WORKER_WORKFLOW_MODULES by test_typed_flows.py."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dapr.ext.workflow import DaprWorkflowContext, WorkflowActivityContext
from pydantic import BaseModel, Field

from dapr_workflow_worker import Flows

flows = Flows()


class Shipment(BaseModel):
    shipment_id: str
    parcels: int = Field(ge=1)


class Label(BaseModel):
    shipment_id: str
    text: str


@flows.activity
def print_label(ctx: WorkflowActivityContext, shipment: Shipment) -> Label:
    assert isinstance(shipment, Shipment), type(shipment)  # the SDK coerced it
    return Label(shipment_id=shipment.shipment_id, text=f"{shipment.parcels} parcel(s)")


@flows.workflow(name="typed_shipment")
def shipment_flow(ctx: DaprWorkflowContext, shipment: Shipment) -> Generator[Any, Any, Any]:
    if not isinstance(shipment, Shipment):
        raise TypeError(f"got {type(shipment).__name__}, not a Shipment")
    label = yield ctx.call_activity(print_label, input=shipment)
    return {"kind": type(shipment).__name__, "label": label}
