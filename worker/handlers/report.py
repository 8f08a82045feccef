"""Builds the status event that reports what a handler did."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.events import EventType, FailureInfo, StatusEvent, now, stable_event_id
from worker.gateway import InstanceState
from worker.handlers.inbound import Inbound
from worker.idempotency import message_key
from worker.publisher import Outbound


def report(
    message: Inbound,
    event: EventType,
    instance_id: str | None,
    *,
    state: InstanceState | None = None,
    status: str | None = None,
    previous_status: str | None = None,
    at: datetime | None = None,
    **fields: Any,
) -> Outbound:
    """A status event caused by ``message``; its id is stable for (message, event, instance).

    ``at``: when the change took effect. Handlers take it after their state check and just
    before the sidecar call that makes the change, so it falls after every change the check
    saw and before anything the workflow does in reaction (default: now).
    """
    if state is not None:
        fields.setdefault("workflow", state.workflow)
        fields.setdefault("created_at", state.created_at)
        fields.setdefault("last_updated_at", state.last_updated_at)
        if state.failure_message is not None:
            fields.setdefault(
                "failure", FailureInfo(message=state.failure_message, type=state.failure_type)
            )
    status_event = StatusEvent(
        event=event,
        instance_id=instance_id,
        status=status or (state.status if state else None),
        previous_status=previous_status,
        occurred_at=at or now(),
        correlation_id=message.message_id,
        **fields,
    )
    key = message_key(message.topic, message.source, message.message_id)
    return Outbound(stable_event_id(key, event.value, instance_id or ""), status_event)
