"""`workflow.approval`: raise an external event into an instance, once per message."""

from __future__ import annotations

from worker.events import EventType
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Claim
from worker.messages import RaiseEvent
from worker.outcomes import Rejected
from worker.publisher import Outbound


class ApprovalHandler:
    def __init__(self, gateway: WorkflowGateway) -> None:
        self._gateway = gateway

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: RaiseEvent = parse(message, RaiseEvent)
        state = self._gateway.get_state(request.instance_id, payloads=False)
        if state is None:
            raise Rejected(
                f"unknown instance {request.instance_id}", instance_id=request.instance_id
            )
        if state.is_terminal:
            raise Rejected(
                f"instance {request.instance_id} already finished ({state.status}); "
                f"event {request.event_name!r} not delivered",
                status=state.status,
                instance_id=state.instance_id,
                workflow=state.workflow,
            )
        self._gateway.raise_event(request.instance_id, request.event_name, request.data)
        return [
            report(
                message,
                EventType.EVENT_RAISED,
                request.instance_id,
                state=state,
                event_name=request.event_name,
            )
        ]
