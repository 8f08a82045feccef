"""An instance's history, as daprd keeps it, turned into a compact timeline.

`build_timeline` takes the history events that ``GetInstanceHistory`` returns (protobuf
``HistoryEvent``s, oldest first) and makes one `TimelineEntry` per thing that happened, oldest
first (by when each began):

- ``run``: the run itself (executionStarted .. executionCompleted), with its outcome
  (``completed``, ``failed``, ``terminated``, ``continued_as_new``), output or failure;
- ``activity``: each activity call (taskScheduled .. taskCompleted / taskFailed, matched by the
  scheduled event's id), with its result or failure;
- ``report``: the same, for the worker's own status-report activity (``worker_report_status``):
  the worker's plumbing, kept because it is part of the run (its time counts and it can fail),
  but never counted among the user's activities;
- ``child_workflow``: each child workflow (created .. completed / failed);
- ``timer``: each durable timer (created .. fired), named by when it fires (not the marker
  timer the SDK sets for a wait for an event without a timeout: it never fires);
- ``event_raised``: each external event, with its data;
- ``suspended`` / ``resumed`` / ``terminated`` (with the reason or output given) and
  ``continued_as_new`` (with the new input).

A step with no answer is ``pending`` while the run goes on, and ``abandoned`` once the run has
ended (the workflow no longer waits for it: a timer that lost a race, an activity left behind).
The engine's own bookkeeping (orchestratorStarted/Completed) is left out. Times come from each
event's timestamp, durations are in milliseconds, JSON payloads are parsed, and the worker's
envelope around a run's input is taken off (`run_input`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dapr.ext.workflow._durabletask.internal import orchestration_pb2
from dapr.ext.workflow._durabletask.internal.history_events_pb2 import HistoryEvent
from google.protobuf import timestamp_pb2, wrappers_pb2

from worker.events import FailureInfo, TimelineEntry
from worker.gateway import json_or_text
from worker.hosting import REPORT_ACTIVITY
from worker.origin import unwrap

PENDING = "pending"
ABANDONED = "abandoned"
_STATUS_PREFIX = "ORCHESTRATION_STATUS_"
_EARLIEST = datetime.min.replace(tzinfo=UTC)
# The SDK backs a wait for an external event without a timeout with a timer that never fires
# (fireAt 9999-12-31T23:59:59.999999999Z): a marker of the wait, not a timer of the user's.
_NEVER_SECONDS = 253_402_300_799


@dataclass
class _Draft:
    """A timeline entry while its closing event may still come."""

    kind: str
    name: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    result: Any = None
    failure: FailureInfo | None = None

    def close(self, at: datetime | None, outcome: str) -> None:
        self.ended_at = at
        self.outcome = outcome

    def entry(self) -> TimelineEntry:
        duration = None
        if self.started_at is not None and self.ended_at is not None:
            duration = round((self.ended_at - self.started_at).total_seconds() * 1000, 3)
        return TimelineEntry(
            kind=self.kind,
            name=self.name,
            started_at=self.started_at,
            ended_at=self.ended_at,
            duration_ms=duration,
            outcome=self.outcome,
            result=self.result,
            failure=self.failure,
        )


def _payload(holder: Any, field: str = "input") -> Any:
    """The JSON payload in ``holder.<field>`` (a StringValue), or None when unset."""
    if not holder.HasField(field):
        return None
    value: wrappers_pb2.StringValue = getattr(holder, field)
    return json_or_text(value.value)


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _failure(details: orchestration_pb2.TaskFailureDetails) -> FailureInfo:
    return FailureInfo(
        message=details.errorMessage,
        type=details.errorType or None,
        stack_trace=details.stackTrace.value if details.HasField("stackTrace") else None,
    )


def _status(value: orchestration_pb2.OrchestrationStatus.ValueType) -> str:
    """``ORCHESTRATION_STATUS_COMPLETED`` -> ``completed``."""
    name: str = orchestration_pb2.OrchestrationStatus.Name(value)
    return name.removeprefix(_STATUS_PREFIX).lower()


# History events that end an activity or a child workflow, and the outcome they give it.
_STEP_ENDS = {
    "taskCompleted": "completed",
    "taskFailed": "failed",
    "childWorkflowInstanceCompleted": "completed",
    "childWorkflowInstanceFailed": "failed",
}


def run_input(events: Iterable[HistoryEvent]) -> Any:
    """The input the run was started with, without the worker's envelope (None if unknown)."""
    for event in events:
        if event.WhichOneof("eventType") == "executionStarted":
            return unwrap(_payload(event.executionStarted))[1]
    return None


def build_timeline(events: Iterable[HistoryEvent]) -> list[TimelineEntry]:
    """The timeline of one instance's history events (oldest first), oldest entry first."""
    drafts: list[_Draft] = []
    tasks: dict[int, _Draft] = {}  # open activities, by their taskScheduled event id
    children: dict[int, _Draft] = {}  # open child workflows, by their created event id
    timers: dict[int, _Draft] = {}  # unfired timers, by their timerCreated event id
    run: _Draft | None = None

    def opened(draft: _Draft) -> _Draft:
        drafts.append(draft)
        return draft

    for event in events:
        kind = event.WhichOneof("eventType")
        at = _time(event.timestamp, event.HasField("timestamp"))
        if kind == "executionStarted":
            run = opened(_Draft("run", event.executionStarted.name, at, outcome=PENDING))
        elif kind == "executionCompleted":
            done = event.executionCompleted
            if run is None:  # a history without its start (never seen): still report the end
                run = opened(_Draft("run", started_at=None))
            run.close(at, _status(done.workflowStatus))
            run.result = _payload(done, "result")
            if done.HasField("failureDetails"):
                run.failure = _failure(done.failureDetails)
        elif kind == "taskScheduled":
            name = event.taskScheduled.name
            step = "report" if name == REPORT_ACTIVITY else "activity"
            tasks[event.eventId] = opened(_Draft(step, name, at, outcome=PENDING))
        elif kind in _STEP_ENDS:
            outcome = _STEP_ENDS[kind]
            body = getattr(event, kind)
            opens = tasks if kind.startswith("task") else children
            ended = opens.pop(body.taskScheduledId, None)
            if ended is not None:
                ended.close(at, outcome)
                if outcome == "failed":
                    ended.failure = _failure(body.failureDetails)
                else:
                    ended.result = _payload(body, "result")
        elif kind == "childWorkflowInstanceCreated":
            child = event.childWorkflowInstanceCreated
            children[event.eventId] = opened(
                _Draft("child_workflow", child.name, at, outcome=PENDING)
            )
        elif kind == "timerCreated":
            created = event.timerCreated
            if created.fireAt.seconds >= _NEVER_SECONDS and created.WhichOneof("origin") in (
                None,
                "externalEvent",
            ):
                continue  # an indefinite wait: the event, when it comes, is its own entry
            fires = _time(created.fireAt, created.HasField("fireAt"))
            when = fires.isoformat().replace("+00:00", "Z") if fires is not None else None
            timers[event.eventId] = opened(_Draft("timer", when, at, outcome=PENDING))
        elif kind == "timerFired":
            timer = timers.pop(event.timerFired.timerId, None)
            if timer is not None:
                timer.close(at, "fired")
        elif kind == "eventRaised":
            raised = event.eventRaised
            opened(_Draft("event_raised", raised.name, at, result=_payload(raised)))
        elif kind == "executionSuspended":
            opened(_Draft("suspended", started_at=at, result=_payload(event.executionSuspended)))
        elif kind == "executionResumed":
            opened(_Draft("resumed", started_at=at, result=_payload(event.executionResumed)))
        elif kind == "executionTerminated":
            opened(_Draft("terminated", started_at=at, result=_payload(event.executionTerminated)))
        elif kind == "continueAsNew":
            new_input = unwrap(_payload(event.continueAsNew))[1]
            opened(_Draft("continued_as_new", started_at=at, result=new_input))
        # workflowStarted/workflowCompleted (orchestratorStarted/Completed) are the engine's
        # bookkeeping; eventSent, executionStalled and detached children are not shown.

    if run is not None and run.outcome != PENDING:
        for draft in (*tasks.values(), *children.values(), *timers.values()):
            draft.outcome = ABANDONED  # the run ended without waiting for it
    # History order is the order the workflow saw things; an event raised while the workflow
    # was busy is stamped when it was raised: oldest first is by start time (stable).
    drafts.sort(key=lambda draft: draft.started_at or _EARLIEST)
    return [draft.entry() for draft in drafts]
