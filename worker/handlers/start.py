"""`workflow.start`: start an instance, at most once per message."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from worker.events import EventType, now
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Claim
from worker.messages import StartWorkflow
from worker.origin import Origin
from worker.outcomes import Rejected
from worker.publisher import Outbound

_ID_NAMESPACE = uuid.UUID("0b7e4b8c-2f33-4c52-8a1d-6d1f7e0c9a41")


def derived_instance_id(workflow: str, message: Inbound) -> str:
    """The same message always names the same instance (never a random id)."""
    digest = uuid.uuid5(_ID_NAMESPACE, f"{message.source}\n{message.message_id}").hex[:20]
    return f"{workflow}-{digest}"


class StartHandler:
    def __init__(self, gateway: WorkflowGateway, allowed: Collection[str]) -> None:
        self._gateway = gateway
        self._allowed = allowed

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: StartWorkflow = parse(message, StartWorkflow)
        if request.workflow not in self._allowed:
            raise Rejected(
                f"workflow {request.workflow!r} is not allowed here; allowed: "
                f"{', '.join(sorted(self._allowed)) or 'none'}"
            )
        instance_id = request.instance_id or derived_instance_id(request.workflow, message)
        existing = self._gateway.get_state(instance_id, payloads=True)
        if existing is not None:
            if existing.origin is not None and existing.origin.same_message(
                message.source, message.message_id
            ):  # this message started it already: an earlier delivery's outcome was lost
                return self._reports(message, request, instance_id)
            if not existing.is_terminal:
                raise Rejected(
                    f"instance {instance_id} already exists and is {existing.status}",
                    status=existing.status,
                    instance_id=instance_id,
                    workflow=request.workflow,
                )
            if not request.replace:
                raise Rejected(
                    f"instance {instance_id} already finished ({existing.status}); send "
                    "replace: true to start it again (this wipes its history)",
                    status=existing.status,
                    instance_id=instance_id,
                    workflow=request.workflow,
                )
        data = Origin(message.source, message.message_id).wrap(request.input)
        self._gateway.start(request.workflow, instance_id, data, request.start_at)
        return self._reports(message, request, instance_id)

    @staticmethod
    def _reports(message: Inbound, request: StartWorkflow, instance_id: str) -> list[Outbound]:
        """`scheduled` for a delayed start; `started` is reported by the workflow itself."""
        if request.start_at is None or request.start_at <= now():
            return []
        return [
            report(
                message,
                EventType.SCHEDULED,
                instance_id,
                workflow=request.workflow,
                status="PENDING",
            )
        ]
