"""An instance's history events (hand-built protobuf, as daprd 1.18 returns them) as a timeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from dapr.ext.workflow._durabletask.internal import history_events_pb2 as h
from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as o
from google.protobuf import timestamp_pb2, wrappers_pb2

from tests.status_contract import schema_errors
from worker.events import EventType, StatusEvent, TimelineEntry
from worker.gateway import json_or_text
from worker.origin import Origin
from worker.timeline import build_timeline, run_input

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    return stamp


def _json(value: Any) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=json.dumps(value))


def _event(seconds: float, event_id: int = -1, **kind: Any) -> h.HistoryEvent:
    return h.HistoryEvent(eventId=event_id, timestamp=_at(seconds), **kind)


def _noise(seconds: float) -> list[h.HistoryEvent]:
    """The engine's bookkeeping around each step."""
    return [
        _event(seconds, workflowStarted=h.WorkflowStartedEvent()),
        _event(seconds, workflowCompleted=h.WorkflowCompletedEvent()),
    ]


def _started(seconds: float, name: str, data: Any) -> h.HistoryEvent:
    return _event(seconds, executionStarted=h.ExecutionStartedEvent(name=name, input=_json(data)))


def _scheduled(seconds: float, event_id: int, name: str) -> h.HistoryEvent:
    return _event(seconds, event_id, taskScheduled=h.TaskScheduledEvent(name=name))


def _completed(seconds: float, task: int, result: Any = None) -> h.HistoryEvent:
    done = h.TaskCompletedEvent(taskScheduledId=task)
    if result is not None:
        done.result.CopyFrom(_json(result))
    return _event(seconds, taskCompleted=done)


def _failure(message: str, kind: str = "ValueError") -> o.TaskFailureDetails:
    return o.TaskFailureDetails(
        errorType=kind,
        errorMessage=message,
        stackTrace=wrappers_pb2.StringValue(value="Traceback ..."),
    )


def _timer(seconds: float, event_id: int, fires_after: float) -> h.HistoryEvent:
    return _event(
        seconds, event_id, timerCreated=h.TimerCreatedEvent(fireAt=_at(seconds + fires_after))
    )


def _end(seconds: float, status: int, **fields: Any) -> h.HistoryEvent:
    return _event(
        seconds,
        executionCompleted=h.ExecutionCompletedEvent(workflowStatus=status, **fields),  # type: ignore[arg-type]
    )


def _approved_order() -> list[h.HistoryEvent]:
    """An approval above the threshold: timer raced against the decision, decision won."""
    order = {"order_id": "order-1", "amount": 5000}
    wrapped = Origin("publisher", "msg-1").wrap(order)
    output = {"order_id": "order-1", "status": "approved", "receipt": {"charged": 5000}}
    return [
        *_noise(0),
        _started(0, "approval_workflow", wrapped),
        _event(  # wait_for_external_event without a timeout: the SDK's marker timer
            0.01,
            0,
            timerCreated=h.TimerCreatedEvent(
                fireAt=timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999),
                externalEvent=h.TimerOriginExternalEvent(name="approval_decision"),
            ),
        ),
        _timer(0.01, 3, fires_after=300),
        *_noise(5),
        _event(
            5,
            eventRaised=h.EventRaisedEvent(name="approval_decision", input=_json({"approved": 1})),
        ),
        _scheduled(5.01, 1, "process_order"),
        *_noise(5.2),
        _completed(5.2, 1, {"order_id": "order-1", "charged": 5000}),
        _scheduled(5.21, 2, "worker_report_status"),
        _completed(5.3, 2),
        _end(5.31, o.ORCHESTRATION_STATUS_COMPLETED, result=_json(output)),
    ]


def _by_kind(timeline: list[TimelineEntry], kind: str) -> list[TimelineEntry]:
    return [entry for entry in timeline if entry.kind == kind]


def test_finished_approval() -> None:
    timeline = build_timeline(_approved_order())
    assert [(e.kind, e.name, e.outcome) for e in timeline] == [
        ("run", "approval_workflow", "completed"),
        ("timer", "2026-11-22T10:05:00.010000Z", "abandoned"),
        ("event_raised", "approval_decision", None),
        ("activity", "process_order", "completed"),
        ("report", "worker_report_status", "completed"),
    ]
    run, timer, raised, activity, report = timeline
    assert run.started_at == T0
    assert run.ended_at == T0 + timedelta(seconds=5.31)
    assert run.duration_ms == 5310.0
    assert run.result == {"order_id": "order-1", "status": "approved", "receipt": {"charged": 5000}}
    assert run.failure is None
    assert (timer.ended_at, timer.duration_ms) == (None, None), "it never fired"
    assert raised.result == {"approved": 1}
    assert raised.started_at == T0 + timedelta(seconds=5)
    assert activity.result == {"order_id": "order-1", "charged": 5000}
    assert activity.duration_ms == 190.0
    assert report.result is None


def test_run_input_is_the_users_not_the_envelope() -> None:
    assert run_input(_approved_order()) == {"order_id": "order-1", "amount": 5000}
    assert run_input([_started(0, "w", "plain")]) == "plain"
    assert run_input([]) is None


def test_failed_pending_fired_child_and_suspension_in_a_running_instance() -> None:
    events = [
        _started(0, "tasks_workflow", {"n": 2}),
        _scheduled(0.1, 0, "charge"),
        _timer(0.1, 1, fires_after=2),
        _event(0.5, taskFailed=h.TaskFailedEvent(taskScheduledId=0, failureDetails=_failure("no"))),
        _event(2.1, timerFired=h.TimerFiredEvent(timerId=1, fireAt=_at(2.1))),
        _scheduled(2.2, 2, "ship"),
        _event(
            2.2,
            3,
            childWorkflowInstanceCreated=h.ChildWorkflowInstanceCreatedEvent(
                instanceId="child-1", name="child_workflow"
            ),
        ),
        _event(
            2.3,
            executionSuspended=h.ExecutionSuspendedEvent(
                input=wrappers_pb2.StringValue(value="maintenance")
            ),
        ),
        _event(2.4, executionResumed=h.ExecutionResumedEvent()),
        _event(
            3.2,
            childWorkflowInstanceCompleted=h.ChildWorkflowInstanceCompletedEvent(
                taskScheduledId=3, result=_json([1, 2])
            ),
        ),
    ]
    timeline = build_timeline(events)
    assert [(e.kind, e.name, e.outcome) for e in timeline] == [
        ("run", "tasks_workflow", "pending"),
        ("activity", "charge", "failed"),
        ("timer", "2026-11-22T10:00:02.100000Z", "fired"),
        ("activity", "ship", "pending"),
        ("child_workflow", "child_workflow", "completed"),
        ("suspended", None, None),
        ("resumed", None, None),
    ]
    run, charge, timer, ship, child, suspended, _ = timeline
    assert (run.ended_at, run.duration_ms) == (None, None)
    assert charge.failure is not None
    assert (charge.failure.message, charge.failure.type) == ("no", "ValueError")
    assert charge.failure.stack_trace == "Traceback ..."
    assert charge.duration_ms == 400.0
    assert timer.duration_ms == 2000.0
    assert (ship.started_at, ship.ended_at) == (T0 + timedelta(seconds=2.2), None)
    assert child.result == [1, 2]
    assert child.duration_ms == 1000.0
    assert suspended.result == "maintenance", "a reason that is not JSON stays text"


def test_failed_run_with_failed_child() -> None:
    events = [
        _started(0, "parent", None),
        _event(
            0,
            0,
            childWorkflowInstanceCreated=h.ChildWorkflowInstanceCreatedEvent(name="kid"),
        ),
        _event(
            1,
            childWorkflowInstanceFailed=h.ChildWorkflowInstanceFailedEvent(
                taskScheduledId=0, failureDetails=_failure("kid broke", "TaskFailedError")
            ),
        ),
        _end(
            1.5,
            o.ORCHESTRATION_STATUS_FAILED,
            failureDetails=_failure("kid broke", "TaskFailedError"),
        ),
    ]
    run, child = build_timeline(events)
    assert (run.outcome, child.outcome) == ("failed", "failed")
    assert run.failure is not None and run.failure.message == "kid broke"
    assert child.failure is not None and child.failure.type == "TaskFailedError"
    assert run.result is None


def test_terminated_run_abandons_what_it_waited_for() -> None:
    events = [
        _started(0, "approval_workflow", {"amount": 5000}),
        _timer(0, 0, fires_after=60),
        _scheduled(0, 1, "slow"),
        _event(1, executionTerminated=h.ExecutionTerminatedEvent(input=_json({"stopped": True}))),
        _end(1.1, o.ORCHESTRATION_STATUS_TERMINATED, result=_json({"stopped": True})),
    ]
    timeline = build_timeline(events)
    assert [(e.kind, e.outcome) for e in timeline] == [
        ("run", "terminated"),
        ("timer", "abandoned"),
        ("activity", "abandoned"),
        ("terminated", None),
    ]
    assert timeline[3].result == {"stopped": True}
    assert timeline[0].result == {"stopped": True}


def test_continued_as_new_shows_the_users_new_input() -> None:
    wrapped = Origin("publisher", "msg-1", generation=1).wrap({"counter": 3})
    events = [
        _started(0, "counter_workflow", Origin("publisher", "msg-1").wrap({"counter": 2})),
        _event(1, continueAsNew=h.ContinueAsNewEvent(input=_json(wrapped))),
        _end(1, o.ORCHESTRATION_STATUS_CONTINUED_AS_NEW, result=_json(wrapped)),
    ]
    run, continued = build_timeline(events)
    assert run.outcome == "continued_as_new"
    assert continued.kind == "continued_as_new"
    assert continued.result == {"counter": 3}


def test_oldest_first_by_when_each_began() -> None:
    """An event raised while an activity ran is recorded after the activity's answer."""
    events = [
        _started(0, "w", None),
        _scheduled(1, 0, "slow"),
        _completed(9, 0),
        _event(
            5,
            eventRaised=h.EventRaisedEvent(name="poke", input=wrappers_pb2.StringValue(value="1")),
        ),
    ]
    assert [e.name for e in build_timeline(events)] == ["w", "slow", "poke"]
    reordered = [events[0], events[3], events[1], events[2]]
    assert [e.name for e in build_timeline(reordered)] == ["w", "slow", "poke"]


def test_engine_bookkeeping_and_unmatched_answers_are_left_out() -> None:
    events = [
        *_noise(0),
        _started(0, "w", None),
        _completed(1, 42, "nobody asked"),  # no taskScheduled with id 42
        _event(1, timerFired=h.TimerFiredEvent(timerId=7)),
        *_noise(1),
    ]
    assert [(e.kind, e.outcome) for e in build_timeline(events)] == [("run", "pending")]
    assert build_timeline([]) == []


def test_history_event_fits_the_published_schema() -> None:
    event = StatusEvent(
        event=EventType.HISTORY,
        instance_id="order-1",
        occurred_at=T0,
        timeline=build_timeline(_approved_order()),
    )
    dumped = json.loads(event.model_dump_json(exclude_none=True))
    assert schema_errors(dumped) == []
    assert StatusEvent.model_validate(dumped) == event


def test_json_or_text() -> None:
    assert json_or_text('{"a": 1}') == {"a": 1}
    assert json_or_text("false") is False
    assert json_or_text("not json") == "not json"
    assert json_or_text(None) is None
