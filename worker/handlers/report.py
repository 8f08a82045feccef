"""Builds the status event that reports what a handler did."""

from __future__ import annotations

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
    **fields: Any,
) -> Outbound:
    """A status event caused by ``message``; its id is stable for (message, event, instance)."""
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
        occurred_at=now(),
        correlation_id=message.message_id,
        **fields,
    )
    key = message_key(message.topic, message.source, message.message_id)
    return Outbound(stable_event_id(key, event.value, instance_id or ""), status_event)
