"""Outbound status events: the `data` of every CloudEvent the worker publishes on the status topic.

The CloudEvent around it: ``type`` = ``EVENT_TYPE_PREFIX + event``, ``subject`` = instance id,
``id`` = stable for one transition (a redelivery republishes the same id), ``source`` = app-id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

EVENT_TYPE_PREFIX = "io.github.dapr-workflow-worker.v1."
_ID_NAMESPACE = uuid.UUID("6f1c9f2e-4c1a-4b57-9a8e-5f0a6a3c2d10")


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC with an explicit offset; a naive time (the SDK's) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A creation time before this is the sidecar's "not set" (a zero timestamp), shown for an
# instance that has not run yet.
_NO_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def real_time(value: datetime | None) -> datetime | None:
    """``value`` in UTC, or None when it is missing or the sidecar's zero ("not set")."""
    if value is None:
        return None
    value = as_utc(value)
    return value if value >= _NO_TIME else None


def iso(value: datetime | None) -> str:
    """``value`` in UTC as ISO 8601, "" when there is none."""
    return as_utc(value).isoformat() if value is not None else ""


UtcTime = Annotated[datetime, AfterValidator(as_utc)]
"""A time that is always published as RFC 3339 with an offset (``...+00:00``)."""


class EventType(StrEnum):
    """What happened. `rejected` is about a request; `state` and `history` answer queries;
    `stalled` / `unstalled`: a step has been in flight too long / the instance moved again."""

    SCHEDULED = "scheduled"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    EVENT_RAISED = "event_raised"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"
    PURGED = "purged"
    REJECTED = "rejected"
    STATE = "state"
    HISTORY = "history"
    STALLED = "stalled"
    UNSTALLED = "unstalled"


@dataclass(frozen=True)
class Meaning:
    """What an event type tells a reader about its instance."""

    starts: bool = False  # the instance runs, or will: the answer to a start
    ends: bool = False  # the instance's end
    sets_status: bool = False  # its `status` is the instance's runtime status from then on
    news: bool = True  # says where the instance stands (not: a rejected request, a history)


MEANINGS: Mapping[EventType, Meaning] = {
    EventType.SCHEDULED: Meaning(starts=True),
    EventType.STARTED: Meaning(starts=True, sets_status=True),
    EventType.SUSPENDED: Meaning(sets_status=True),
    EventType.RESUMED: Meaning(sets_status=True),
    EventType.EVENT_RAISED: Meaning(),
    EventType.COMPLETED: Meaning(ends=True, sets_status=True),
    EventType.FAILED: Meaning(ends=True, sets_status=True),
    EventType.TERMINATED: Meaning(ends=True, sets_status=True),
    EventType.PURGED: Meaning(),
    EventType.REJECTED: Meaning(news=False),
    EventType.STATE: Meaning(),
    EventType.HISTORY: Meaning(news=False),
    EventType.STALLED: Meaning(),
    EventType.UNSTALLED: Meaning(),
}
"""One row per event type (a unit test keeps it complete)."""

STARTS = frozenset(e for e, m in MEANINGS.items() if m.starts)
ENDS = frozenset(e for e, m in MEANINGS.items() if m.ends)
SETS_STATUS = frozenset(e for e, m in MEANINGS.items() if m.sets_status)
NO_NEWS = frozenset(e for e, m in MEANINGS.items() if not m.news)


class RejectCode(StrEnum):
    """Why a message was rejected, in one word: the `code` of a `rejected` event, for programs
    to branch on (its `reason` says the rest, for people). Codes may be added: read one you do
    not know as `other`.

    - `invalid_message`: not JSON, not UTF-8, a wrong content type, not the message's schema,
      or a start whose input does not fit the workflow's typed input (its model)
    - `too_large`: above the worker's size limit (WORKER_MAX_MESSAGE_BYTES)
    - `unknown_workflow`: a workflow not allowed here, or not registered
    - `unknown_instance`: no such instance (still none after the grace period)
    - `purged`: the instance existed and was purged
    - `instance_exists`: a start for an id in use (or finished, without `replace`)
    - `state_forbids`: the instance's status forbids the action
    - `sidecar_refused`: another permanent error from the sidecar
    - `gave_up`: still failing transiently after the attempt limit (the same request may
      succeed later)
    - `other`: none of these
    """

    INVALID_MESSAGE = "invalid_message"
    TOO_LARGE = "too_large"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    UNKNOWN_INSTANCE = "unknown_instance"
    PURGED = "purged"
    INSTANCE_EXISTS = "instance_exists"
    STATE_FORBIDS = "state_forbids"
    SIDECAR_REFUSED = "sidecar_refused"
    GAVE_UP = "gave_up"
    OTHER = "other"


_REJECT_CODES = frozenset(code.value for code in RejectCode)


def _known_code(value: object) -> object:
    """A code this version does not know (a newer worker's) reads as `other`, so that an older
    reader (wfctl, the console) still takes the event instead of refusing it."""
    if isinstance(value, str) and value not in _REJECT_CODES:
        return RejectCode.OTHER
    return value


class FailureInfo(BaseModel):
    """Why a workflow failed."""

    message: str
    type: str | None = None
    stack_trace: str | None = None


class TimelineEntry(BaseModel):
    """One line of an instance's history: a step, a timer, an event, or the run itself."""

    kind: str = Field(
        description="run, activity, report (the worker's own reporting activity), "
        "child_workflow, timer, event_raised, suspended, resumed, terminated, continued_as_new"
    )
    name: str | None = Field(default=None, description="Activity, workflow or event name.")
    started_at: UtcTime | None = None
    ended_at: UtcTime | None = None
    duration_ms: float | None = None
    outcome: str | None = Field(
        default=None,
        description="completed, failed, fired (a timer), pending (still in flight), "
        "abandoned (never answered: the run ended first)",
    )
    result: JsonValue = Field(default=None, description="Output, or the event's data.")
    failure: FailureInfo | None = None


class StatusEvent(BaseModel):
    """One status change of one instance, or the outcome of one request."""

    model_config = ConfigDict(
        title="StatusEvent",
        json_schema_extra={
            "examples": [
                {
                    "event": "started",
                    "instance_id": "order-1001",
                    "workflow": "approval_workflow",
                    "status": "RUNNING",
                    "previous_status": None,
                    "occurred_at": "2026-11-22T10:00:00Z",
                    "correlation_id": "msg-42",
                },
                {
                    "event": "rejected",
                    "instance_id": "order-1001",
                    "status": "COMPLETED",
                    "reason": "cannot suspend: instance is COMPLETED",
                    "code": "state_forbids",
                    "occurred_at": "2026-11-22T10:05:00Z",
                    "correlation_id": "msg-43",
                },
            ]
        },
    )

    event: EventType
    instance_id: str | None = Field(default=None, description="Absent for a bulk request.")
    workflow: str | None = Field(default=None, description="Workflow name, where known.")
    status: str | None = Field(
        default=None, description="Runtime status after the change (RUNNING, COMPLETED, ...)."
    )
    previous_status: str | None = Field(default=None, description="Status before, where known.")
    created_at: UtcTime | None = Field(default=None, description="When the instance was created.")
    last_updated_at: UtcTime | None = Field(
        default=None, description="When the sidecar last updated the instance, where known."
    )
    occurred_at: UtcTime = Field(
        description="When the change took effect (UTC, the worker's clock). One instance's "
        "events sorted by occurred_at are in the order the changes happened: order by it."
    )
    output: JsonValue = Field(default=None, description="Workflow output (completed, state).")
    input: JsonValue = Field(default=None, description="Workflow input (state).")
    custom_status: JsonValue = None
    failure: FailureInfo | None = None
    reason: str | None = Field(default=None, description="Given reason, or why a request failed.")
    code: Annotated[RejectCode | None, BeforeValidator(_known_code)] = Field(
        default=None,
        description="On rejected: why, in one word, for programs to branch on (the reason says "
        "it for people); absent on other events.",
    )
    correlation_id: str | None = Field(
        default=None,
        description="CloudEvent id of the message that caused this; absent for "
        "changes the workflow made itself.",
    )
    event_name: str | None = Field(default=None, description="For event_raised.")
    count: int | None = Field(default=None, description="For a bulk purge: instances purged.")
    observed: bool = Field(
        default=False,
        description="True when the worker learned of this change by watching the instance "
        "(it was made by someone else: the dapr CLI, another client, daprd itself), not by "
        "causing it; such events have no correlation_id.",
    )
    timeline: list[TimelineEntry] | None = Field(
        default=None, description="For history: the instance's history, oldest first."
    )
    step: TimelineEntry | None = Field(
        default=None, description="For stalled: the step in flight for too long."
    )
    truncated: bool = Field(
        default=False,
        description="True when bulky fields (output, input, custom_status, failure, reason, "
        "timeline) were cut to fit the broker.",
    )

    def cloudevent_type(self) -> str:
        return EVENT_TYPE_PREFIX + self.event.value


def now() -> datetime:
    return datetime.now(UTC)


def stable_event_id(*parts: str) -> str:
    """A CloudEvent id that is the same every time the same transition is reported."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))
