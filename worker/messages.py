"""Inbound messages: one validated model per topic. The JSON Schemas are generated from these.

Every model forbids unknown fields, so a typo ("instanceId") is a clear rejection rather than
a silently ignored field.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

InstanceId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$",
        description="Workflow instance id: letters, digits and _ . : @ - (no spaces, no '|').",
        examples=["order-1001"],
    ),
]

WorkflowName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="Name of a registered workflow.",
        examples=["approval_workflow"],
    ),
]

Reason = Annotated[str, Field(max_length=2_000, description="Free text, echoed in status events.")]

_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _parse_duration(value: Any) -> Any:
    """Go-style durations ("720h", "1h30m", "90s"), as `dapr workflow purge` takes them."""
    if isinstance(value, str) and _GO_DURATION.fullmatch(value.strip()):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_PART.findall(value))
        return timedelta(seconds=seconds)
    return value  # anything else: pydantic's own timedelta parsing (ISO 8601, seconds)


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    WithJsonSchema(
        {
            "type": "string",
            "description": 'A duration: Go style ("720h", "1h30m", "90s") or ISO 8601 ("P30D").',
            "examples": ["720h", "P30D"],
        }
    ),
]


class TerminalStatus(StrEnum):
    """Runtime statuses in which an instance has finished and may be purged."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"


TERMINAL_STATUSES = frozenset(s.value for s in TerminalStatus)
ACTIVE_STATUSES = frozenset({"RUNNING", "PENDING", "SUSPENDED", "STALLED"})
"""Runtime statuses of an instance that has not finished."""


class BulkOnly:
    """Marks a field of an action's bulk form (no ``instance_id``): not in its one-instance
    form (the console's API body for one instance leaves it out)."""


BULK_ONLY = BulkOnly()


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionMessage(_Message):
    """A `workflow.control` message: one action, named by its field ``action``. The actions
    and the union the line validates with are declared in `worker.actions`."""


class StartWorkflow(_Message):
    """`workflow.start`: start an instance of a registered workflow."""

    model_config = ConfigDict(
        title="StartWorkflow",
        json_schema_extra={
            "examples": [
                {
                    "workflow": "approval_workflow",
                    "instance_id": "order-1001",
                    "input": {"order_id": "1001", "amount": 2500, "approval_timeout_seconds": 300},
                },
                {"workflow": "counter_workflow"},
            ]
        },
    )

    workflow: WorkflowName
    instance_id: InstanceId | None = Field(
        default=None,
        description="Id of the new instance. Default: derived from the message's CloudEvent "
        "source and id, so a redelivered message names the same instance.",
    )
    input: JsonValue = Field(default=None, description="Any JSON, passed to the workflow.")
    start_at: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 time with offset; the instance starts then (a delayed start).",
        examples=["2026-12-01T09:00:00Z"],
    )
    replace: bool = Field(
        default=False,
        description="Recreate an instance whose id already finished (its history is wiped). "
        "Without it such a start is rejected.",
    )


class RaiseEvent(_Message):
    """`workflow.approval`: raise an external event (such as a human decision) into an instance.

    An event raised before the workflow waits for it is kept and delivered when it does.
    """

    model_config = ConfigDict(
        title="RaiseEvent",
        json_schema_extra={
            "examples": [
                {"instance_id": "order-1001", "data": {"approved": True, "approver": "ana"}},
                {"instance_id": "order-1001", "event_name": "approval_decision", "data": False},
            ]
        },
    )

    instance_id: InstanceId
    event_name: str = Field(
        default="approval_decision", min_length=1, max_length=256, description="Event name."
    )
    data: JsonValue = Field(
        default=None, description="Any JSON, including false, 0 and {} (delivered as given)."
    )


class Suspend(ActionMessage):
    """Suspend a running instance."""

    model_config = ConfigDict(title="Suspend")
    action: Literal["suspend"]
    instance_id: InstanceId
    reason: Reason | None = None


class Resume(ActionMessage):
    """Resume a suspended instance."""

    model_config = ConfigDict(title="Resume")
    action: Literal["resume"]
    instance_id: InstanceId
    reason: Reason | None = None


class Terminate(ActionMessage):
    """Terminate an instance that has not finished."""

    model_config = ConfigDict(title="Terminate")
    action: Literal["terminate"]
    instance_id: InstanceId
    reason: Reason | None = None
    output: JsonValue = Field(default=None, description="Output recorded on the instance.")
    recursive: bool = Field(default=True, description="Also terminate child workflows.")


class Purge(ActionMessage):
    """Purge one finished instance, or in bulk: every finished instance matching the filters."""

    model_config = ConfigDict(
        title="Purge",
        json_schema_extra={
            "examples": [
                {"action": "purge", "instance_id": "order-1001"},
                {"action": "purge", "older_than": "720h"},
                {"action": "purge", "statuses": ["FAILED", "TERMINATED"]},
            ]
        },
    )
    action: Literal["purge"]
    instance_id: InstanceId | None = Field(
        default=None, description="One instance; leave out for a bulk purge."
    )
    older_than: Annotated[Duration | None, BULK_ONLY] = Field(
        default=None, description="Bulk: only instances created longer ago than this."
    )
    statuses: Annotated[list[TerminalStatus] | None, BULK_ONLY] = Field(
        default=None, min_length=1, description="Bulk: only instances in these statuses."
    )
    recursive: bool = Field(default=True, description="Also purge child workflows.")

    @model_validator(mode="after")
    def _single_or_bulk(self) -> Purge:
        if self.instance_id is not None and (self.older_than is not None or self.statuses):
            raise ValueError("give either instance_id or the bulk filters older_than/statuses")
        if self.older_than is not None and self.older_than <= timedelta(0):
            raise ValueError("older_than must be a positive duration")
        return self

    @property
    def is_bulk(self) -> bool:
        return self.instance_id is None


class Query(ActionMessage):
    """Publish the instance's current state on the status topic (event `state`)."""

    model_config = ConfigDict(title="Query")
    action: Literal["query"]
    instance_id: InstanceId


class History(ActionMessage):
    """Publish the instance's history as a timeline on the status topic (event `history`): the
    run, each activity, child workflow and timer with its times and result, events raised."""

    model_config = ConfigDict(title="History")
    action: Literal["history"]
    instance_id: InstanceId
