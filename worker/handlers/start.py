"""`workflow.start`: start an instance, at most once per message."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from worker import traces
from worker.events import EventType, now, real_time
from worker.gateway import InstanceState, WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Claim
from worker.inputs import InputModel
from worker.messages import StartWorkflow
from worker.origin import Origin
from worker.outcomes import RejectCode, Rejected, Transient
from worker.publisher import Outbound

# A PENDING instance this young may be one a timed-out start of this message created.
_UNDECIDED_FOR = timedelta(seconds=60)


def _undecided(state: InstanceState) -> bool:
    """Whether ``state`` may be an instance a timed-out or refused start of this very
    message created: PENDING, origin not visible, and created recently (or at a time the
    sidecar does not show). Retrying is bounded by the pipeline's attempt limit."""
    if state.origin is not None or state.status != "PENDING":
        return False
    created = real_time(state.created_at)
    return created is None or now() - created < _UNDECIDED_FOR


_ID_NAMESPACE = uuid.UUID("0b7e4b8c-2f33-4c52-8a1d-6d1f7e0c9a41")


def derived_instance_id(workflow: str, message: Inbound) -> str:
    """The same message always names the same instance (never a random id)."""
    digest = uuid.uuid5(_ID_NAMESPACE, f"{message.source}\n{message.message_id}").hex[:20]
    return f"{workflow}-{digest}"


class StartHandler:
    def __init__(
        self,
        gateway: WorkflowGateway,
        allowed: Collection[str],
        inputs: Mapping[str, InputModel] | None = None,
    ) -> None:
        """``inputs``: the model each typed workflow's input must fit (`WorkflowRegistry`)."""
        self._gateway = gateway
        self._allowed = allowed
        self._inputs = inputs or {}

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: StartWorkflow = parse(message, StartWorkflow)
        if request.workflow not in self._allowed:
            raise Rejected(
                f"workflow {request.workflow!r} is not allowed here; allowed: "
                f"{', '.join(sorted(self._allowed)) or 'none'}",
                code=RejectCode.UNKNOWN_WORKFLOW,
            )
        self._check_input(request)
        instance_id = request.instance_id or derived_instance_id(request.workflow, message)
        existing = self._gateway.get_state(instance_id, payloads=True)
        if existing is not None and self._ours(existing, message, request, instance_id):
            # An earlier delivery started it and its answer was lost: report again.
            return self._reports(message, request, instance_id, existing.created_at)
        origin = Origin(
            message.source,
            message.message_id,
            report_start=self._delayed(request),
            instance_id=instance_id,
            trace=traces.carrier(),  # the message's trace, for what the workflow reports later
        )
        at = now()  # before the start: everything the instance does comes after it
        try:
            self._gateway.start(
                request.workflow, instance_id, origin.wrap(request.input), request.start_at
            )
        except Rejected:
            # The sidecar may refuse a start it has in fact just done (ALREADY_EXISTS from its
            # own retry during a fail-over), or a duplicate may have won the race: look again.
            existing = self._gateway.get_state(instance_id, payloads=True)
            if existing is None or not self._ours(existing, message, request, instance_id):
                raise
            return self._reports(message, request, instance_id, existing.created_at)
        return self._reports(message, request, instance_id, at)

    def _check_input(self, request: StartWorkflow) -> None:
        """Reject, before anything runs, an input that does not fit the workflow's model."""
        model = self._inputs.get(request.workflow)
        why = model.check(request.input) if model is not None else None
        if model is not None and why is not None:
            raise Rejected(
                f"input does not fit {request.workflow}'s {model.name}: {why}",
                code=RejectCode.INVALID_MESSAGE,
                instance_id=request.instance_id,
                workflow=request.workflow,
            )

    def _ours(
        self, existing: InstanceState, message: Inbound, request: StartWorkflow, instance_id: str
    ) -> bool:
        """True when ``existing`` is the instance this very message started.

        Otherwise raise: Transient while that cannot be told yet, Rejected when the instance
        is someone else's and may not be replaced.
        """
        if self._started_by(existing, message):
            return True
        if _undecided(existing):
            # Created but not yet run: the sidecar shows no input, so whose it is cannot be
            # told yet (this message's own start may have created it, then timed out or been
            # answered ALREADY_EXISTS during a fail-over). Ask again once it runs.
            raise Transient(f"instance {instance_id} is PENDING; its origin is not known yet")
        if not existing.is_terminal:
            raise Rejected(
                f"instance {instance_id} already exists and is {existing.status}",
                code=RejectCode.INSTANCE_EXISTS,
                status=existing.status,
                instance_id=instance_id,
                workflow=request.workflow,
            )
        if not request.replace:
            raise Rejected(
                f"instance {instance_id} already finished ({existing.status}); send "
                "replace: true to start it again (this wipes its history)",
                code=RejectCode.INSTANCE_EXISTS,
                status=existing.status,
                instance_id=instance_id,
                workflow=request.workflow,
            )
        return False

    @staticmethod
    def _started_by(state: InstanceState, message: Inbound) -> bool:
        """Whether ``state`` is of the instance this very message started."""
        return state.origin is not None and state.origin.same_message(
            message.source, message.message_id
        )

    @staticmethod
    def _delayed(request: StartWorkflow) -> bool:
        return request.start_at is not None and request.start_at > now()

    def _reports(
        self,
        message: Inbound,
        request: StartWorkflow,
        instance_id: str,
        created_at: datetime | None = None,
    ) -> list[Outbound]:
        """`started`, or `scheduled` for a delayed start (whose workflow reports `started`).

        ``created_at``: when the instance was created (default: now, it just was); also when
        the start took effect.
        """
        delayed = self._delayed(request)
        created = real_time(created_at) or now()  # not set yet: it was just created
        return [
            report(
                message,
                EventType.SCHEDULED if delayed else EventType.STARTED,
                instance_id,
                workflow=request.workflow,
                status="PENDING" if delayed else "RUNNING",
                at=created,
                created_at=created,
                last_updated_at=created,
            )
        ]
