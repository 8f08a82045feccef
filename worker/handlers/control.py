"""`workflow.control`: the actions declared in `worker.actions`, and purge's bulk form."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from worker.actions import BY_NAME, PURGED, Action, control_adapter
from worker.events import EventType, now
from worker.expectations import Expectations
from worker.gateway import InstanceState, WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.report import report
from worker.idempotency import Begin, Claim
from worker.messages import ActionMessage, Purge
from worker.outcomes import Missing, RejectCode, Rejected
from worker.publisher import Outbound
from worker.purges import Purges

log = logging.getLogger(__name__)


class ControlHandler:
    """Every action of `worker.actions`: a change (checked against the statuses it is allowed
    from, noted for the watch, made through the gateway) or a read, each reported."""

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
        request: ActionMessage = parse(message, control_adapter)
        if isinstance(request, Purge) and request.is_bulk:
            return self._bulk_purge(message, request)
        action = BY_NAME[request.action]  # type: ignore[attr-defined]
        instance_id: str = request.instance_id  # type: ignore[attr-defined]
        if action.read is None:
            return self._change(message, claim, instance_id, action, request)
        state = self._existing(instance_id, payloads=action.payloads)
        fields = action.read(self._gateway, request, state)
        return [report(message, action.event, instance_id, state=state, **fields)]

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
        action: Action[Any],
        request: ActionMessage,
    ) -> list[Outbound]:
        """Check the instance may take ``action``, make the change, and report it."""
        change, call = action.change, action.call
        assert change is not None and call is not None
        fields = action.echoed(request)
        taken_over = claim.outcome is Begin.TAKEN_OVER
        state = self._gateway.get_state(instance_id, payloads=False)
        if state is None:
            if taken_over and change.removes:  # an earlier delivery purged it, then died
                self._purged(instance_id, now())
                return [report(message, action.event, instance_id, status=change.target)]
            raise Missing(instance_id)  # perhaps not started yet: parked a while
        if state.status not in change.allowed_from:
            if taken_over and state.status == change.target:  # done before a crash
                return [
                    report(
                        message,
                        action.event,
                        instance_id,
                        state=state,
                        status=change.target,
                        **fields,
                    )
                ]
            raise Rejected(
                f"cannot {action.name} {instance_id}: "
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
            call(self._gateway, request)
        except Exception:
            if self._notes is not None:
                self._notes.withdraw_status(instance_id, change.target)
            raise
        if change.removes:
            self._purged(instance_id, at)
        return [
            report(
                message,
                action.event,
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
                self._notes.expect_status(instance_id, PURGED)
            try:
                self._gateway.purge(instance_id, request.recursive)
            except Rejected as error:  # gone meanwhile: someone else purged it
                if self._notes is not None:
                    self._notes.withdraw_status(instance_id, PURGED)
                log.info("bulk purge skipped %s: %s", instance_id, error)
                continue
            self._purged(instance_id, at)
            events.append(
                report(
                    message,
                    EventType.PURGED,
                    instance_id,
                    state=state,
                    status=PURGED,
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
