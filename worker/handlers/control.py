"""`workflow.control`: suspend, resume, terminate, purge (one or in bulk), query, history."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.events import EventType, now
from worker.expectations import Expectations
from worker.gateway import ACTIVE_STATUSES, TERMINAL_STATUSES, InstanceState, WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Begin, Claim
from worker.messages import (
    ControlAction,
    History,
    Purge,
    Query,
    Resume,
    Suspend,
    Terminate,
    control_adapter,
)
from worker.outcomes import Missing, RejectCode, Rejected
from worker.publisher import Outbound
from worker.purges import Purges
from worker.timeline import build_timeline, run_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transition:
    """A status change that one control action asks for."""

    verb: str
    event: EventType
    allowed_from: frozenset[str]
    target: str
    why_not: str


SUSPEND = Transition(
    "suspend",
    EventType.SUSPENDED,
    frozenset({"RUNNING", "PENDING"}),
    "SUSPENDED",
    "only a running instance can be suspended",
)
RESUME = Transition(
    "resume",
    EventType.RESUMED,
    frozenset({"SUSPENDED"}),
    "RUNNING",
    "only a suspended instance can be resumed",
)
TERMINATE = Transition(
    "terminate", EventType.TERMINATED, ACTIVE_STATUSES, "TERMINATED", "it has already finished"
)
PURGE = Transition(
    "purge", EventType.PURGED, TERMINAL_STATUSES, "PURGED", "only a finished instance can be purged"
)


class ControlHandler:
    def __init__(
        self,
        gateway: WorkflowGateway,
        notes: Expectations | None = None,
        purges: Purges | None = None,
    ) -> None:
        """``notes``: where to note a change before making it (when something watches);
        ``purges``: where to note each purge made (`worker.purges`)."""
        self._gateway = gateway
        self._notes = notes
        self._purges = purges

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: ControlAction = parse(message, control_adapter)
        g = self._gateway
        match request:
            case Suspend():
                return self._change(
                    message,
                    claim,
                    request.instance_id,
                    SUSPEND,
                    lambda: g.suspend(request.instance_id, request.reason),
                    reason=request.reason,
                )
            case Resume():
                return self._change(
                    message,
                    claim,
                    request.instance_id,
                    RESUME,
                    lambda: g.resume(request.instance_id, request.reason),
                    reason=request.reason,
                )
            case Terminate():
                return self._change(
                    message,
                    claim,
                    request.instance_id,
                    TERMINATE,
                    lambda: g.terminate(request.instance_id, request.output, request.recursive),
                    reason=request.reason,
                    output=request.output,
                )
            case Purge() if request.instance_id is not None:
                instance_id = request.instance_id
                return self._change(
                    message,
                    claim,
                    instance_id,
                    PURGE,
                    lambda: g.purge(instance_id, request.recursive),
                )
            case Purge():
                return self._bulk_purge(message, request)
            case Query():
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
            case History():
                state = self._existing(request.instance_id)
                history = g.history(request.instance_id)  # Missing when purged meanwhile
                return [
                    report(
                        message,
                        EventType.HISTORY,
                        request.instance_id,
                        state=state,
                        input=run_input(history),
                        timeline=build_timeline(history),
                    )
                ]
        raise Rejected(  # pragma: no cover
            f"unsupported control message {request!r}", code=RejectCode.INVALID_MESSAGE
        )

    def _existing(self, instance_id: str, *, payloads: bool = False) -> InstanceState:
        state = self._gateway.get_state(instance_id, payloads=payloads)
        if state is None:
            raise Missing(instance_id)  # perhaps not started yet: parked a while
        return state

    def _change(
        self,
        message: Inbound,
        claim: Claim,
        instance_id: str,
        change: Transition,
        call: Callable[[], None],
        **fields: Any,
    ) -> list[Outbound]:
        """Check the instance may make ``change``, make it, and report it."""
        taken_over = claim.outcome is Begin.TAKEN_OVER
        state = self._gateway.get_state(instance_id, payloads=False)
        if state is None:
            if taken_over and change is PURGE:  # an earlier delivery purged it, then died
                self._purged(instance_id, now())
                return [report(message, change.event, instance_id, status=change.target)]
            raise Missing(instance_id)  # perhaps not started yet: parked a while
        if state.status not in change.allowed_from:
            if taken_over and state.status == change.target:  # done before a crash
                return [
                    report(
                        message,
                        change.event,
                        instance_id,
                        state=state,
                        status=change.target,
                        **fields,
                    )
                ]
            raise Rejected(
                f"cannot {change.verb} {instance_id}: "
                f"instance is {state.status} ({change.why_not})",
                code=RejectCode.STATE_FORBIDS,
                status=state.status,
                instance_id=instance_id,
                workflow=state.workflow,
            )
        at = now()
        if self._notes is not None:
            self._notes.expect_status(instance_id, change.target)
        try:
            call()
        except Exception:
            if self._notes is not None:
                self._notes.withdraw_status(instance_id, change.target)
            raise
        if change is PURGE:
            self._purged(instance_id, at)
        return [
            report(
                message,
                change.event,
                instance_id,
                state=state,
                status=change.target,
                previous_status=state.status,
                at=at,
                **fields,
            )
        ]

    def _purged(self, instance_id: str, at: datetime) -> None:
        if self._purges is not None:
            self._purges.note(instance_id, at)

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
            at = now()
            if self._notes is not None:
                self._notes.expect_status(instance_id, PURGE.target)
            try:
                self._gateway.purge(instance_id, request.recursive)
            except Rejected as error:  # gone meanwhile: someone else purged it
                if self._notes is not None:
                    self._notes.withdraw_status(instance_id, PURGE.target)
                log.info("bulk purge skipped %s: %s", instance_id, error)
                continue
            self._purged(instance_id, at)
            events.append(
                report(
                    message,
                    EventType.PURGED,
                    instance_id,
                    state=state,
                    status="PURGED",
                    previous_status=state.status,
                    at=at,
                )
            )
        summary = report(
            message,
            EventType.PURGED,
            None,
            count=len(events),
            reason=f"bulk purge removed {len(events)} instance(s)",
        )
        return [*events, summary]


def _aware(value: datetime) -> datetime:
    """The SDK returns naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
