"""`workflow.control`: suspend, resume, terminate, purge (one or in bulk) and query."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from worker.events import EventType, now
from worker.gateway import InstanceState, WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Claim
from worker.messages import ControlAction, Purge, Query, Resume, Suspend, Terminate, control_adapter
from worker.outcomes import Rejected
from worker.publisher import Outbound

log = logging.getLogger(__name__)


class ControlHandler:
    def __init__(self, gateway: WorkflowGateway) -> None:
        self._gateway = gateway
        self._actions: dict[type, Callable[[Inbound, ControlAction], list[Outbound]]] = {
            Suspend: self._suspend,
            Resume: self._resume,
            Terminate: self._terminate,
            Purge: self._purge,
            Query: self._query,
        }

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: ControlAction = parse(message, control_adapter)
        return self._actions[type(request)](message, request)

    def _existing(self, instance_id: str, *, payloads: bool = False) -> InstanceState:
        state = self._gateway.get_state(instance_id, payloads=payloads)
        if state is None:
            raise Rejected(f"unknown instance {instance_id}", instance_id=instance_id)
        return state

    @staticmethod
    def _forbid(state: InstanceState, action: str, why: str) -> Rejected:
        return Rejected(
            f"cannot {action} {state.instance_id}: instance is {state.status} ({why})",
            status=state.status,
            instance_id=state.instance_id,
            workflow=state.workflow,
        )

    def _suspend(self, message: Inbound, request: ControlAction) -> list[Outbound]:
        assert isinstance(request, Suspend)
        state = self._existing(request.instance_id)
        if state.status not in ("RUNNING", "PENDING"):
            raise self._forbid(state, "suspend", "only a running instance can be suspended")
        self._gateway.suspend(request.instance_id, request.reason)
        return [
            report(
                message,
                EventType.SUSPENDED,
                request.instance_id,
                state=state,
                status="SUSPENDED",
                previous_status=state.status,
                reason=request.reason,
            )
        ]

    def _resume(self, message: Inbound, request: ControlAction) -> list[Outbound]:
        assert isinstance(request, Resume)
        state = self._existing(request.instance_id)
        if state.status != "SUSPENDED":
            raise self._forbid(state, "resume", "only a suspended instance can be resumed")
        self._gateway.resume(request.instance_id, request.reason)
        return [
            report(
                message,
                EventType.RESUMED,
                request.instance_id,
                state=state,
                status="RUNNING",
                previous_status=state.status,
                reason=request.reason,
            )
        ]

    def _terminate(self, message: Inbound, request: ControlAction) -> list[Outbound]:
        assert isinstance(request, Terminate)
        state = self._existing(request.instance_id)
        if state.is_terminal:
            raise self._forbid(state, "terminate", "it has already finished")
        self._gateway.terminate(request.instance_id, request.output, request.recursive)
        return [
            report(
                message,
                EventType.TERMINATED,
                request.instance_id,
                state=state,
                status="TERMINATED",
                previous_status=state.status,
                reason=request.reason,
                output=request.output,
            )
        ]

    def _query(self, message: Inbound, request: ControlAction) -> list[Outbound]:
        assert isinstance(request, Query)
        state = self._existing(request.instance_id, payloads=True)
        return [
            report(
                message,
                EventType.STATE,
                request.instance_id,
                state=state,
                input=state.input,
                output=state.output,
                custom_status=state.custom_status,
            )
        ]

    def _purge(self, message: Inbound, request: ControlAction) -> list[Outbound]:
        assert isinstance(request, Purge)
        if request.instance_id is not None:
            state = self._existing(request.instance_id)
            if not state.is_terminal:
                raise self._forbid(state, "purge", "only a finished instance can be purged")
            self._gateway.purge(request.instance_id, request.recursive)
            return [self._purged(message, state)]
        return self._bulk_purge(message, request)

    def _bulk_purge(self, message: Inbound, request: Purge) -> list[Outbound]:
        wanted = {s.value for s in request.statuses} if request.statuses else None
        cutoff = now() - request.older_than if request.older_than is not None else None
        events: list[Outbound] = []
        for instance_id in list(self._gateway.instance_ids()):
            state = self._gateway.get_state(instance_id, payloads=False)
            if state is None or not state.is_terminal:
                continue
            if wanted is not None and state.status not in wanted:
                continue
            if cutoff is not None and (
                state.created_at is None or _aware(state.created_at) > cutoff
            ):
                continue
            try:
                self._gateway.purge(instance_id, request.recursive)
            except Rejected as error:  # gone meanwhile: someone else purged it
                log.info("bulk purge skipped %s: %s", instance_id, error)
                continue
            events.append(self._purged(message, state))
        summary = report(
            message,
            EventType.PURGED,
            None,
            count=len(events),
            reason=f"bulk purge removed {len(events)} instance(s)",
        )
        return [*events, summary]

    @staticmethod
    def _purged(message: Inbound, state: InstanceState) -> Outbound:
        return report(
            message,
            EventType.PURGED,
            state.instance_id,
            state=state,
            status="PURGED",
            previous_status=state.status,
        )


def _aware(value: datetime) -> datetime:
    """The SDK returns naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
