"""`workflow.approval`: raise an external event into an instance, once per message."""

from __future__ import annotations

from worker.events import EventType, now
from worker.expectations import Expectations, noted_run
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Claim
from worker.messages import RaiseEvent
from worker.outcomes import Missing, RejectCode, Rejected
from worker.publisher import Outbound


class ApprovalHandler:
    def __init__(self, gateway: WorkflowGateway, notes: Expectations | None = None) -> None:
        """``notes``: where to note a raise before making it (when something watches)."""
        self._gateway = gateway
        self._notes = notes

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: RaiseEvent = parse(message, RaiseEvent)
        state = self._gateway.get_state(request.instance_id, payloads=False)
        if state is None:
            raise Missing(request.instance_id)  # perhaps not started yet: parked a while
        if state.is_terminal:
            raise Rejected(
                f"instance {request.instance_id} already finished ({state.status}); "
                f"event {request.event_name!r} not delivered",
                code=RejectCode.STATE_FORBIDS,
                status=state.status,
                instance_id=state.instance_id,
                workflow=state.workflow,
            )
        at = now()
        run = noted_run(state.created_at)
        if self._notes is not None:
            self._notes.expect_raise(request.instance_id, request.event_name, run)
        try:
            self._gateway.raise_event(request.instance_id, request.event_name, request.data)
        except Exception:
            if self._notes is not None:
                self._notes.withdraw_raise(request.instance_id, request.event_name, run)
            raise
        return [
            report(
                message,
                EventType.EVENT_RAISED,
                request.instance_id,
                state=state,
                at=at,
                event_name=request.event_name,
            )
        ]
