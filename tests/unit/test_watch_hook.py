"""The hook on the SDK's workflow worker: every work item still runs as before, and the ones
that change an instance (suspend, resume, terminate, events raised, a start the worker did not
make) are passed on to the watch; steps finishing are not."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from dapr.ext.workflow import DaprWorkflowContext, WorkflowRuntime
from dapr.ext.workflow._durabletask.internal import history_events_pb2 as h
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import timestamp_pb2, wrappers_pb2

from worker.origin import Origin
from worker.watch import hook

ID = "order-1"
T0 = datetime(2026, 11, 22, 10, 0, 0, 250000, tzinfo=UTC)

Hint = tuple[str, list[datetime], str | None]


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    return stamp


def _event(seconds: float = 0, **kind: Any) -> h.HistoryEvent:
    return h.HistoryEvent(eventId=-1, timestamp=_stamp(seconds), **kind)


def _raised(seconds: float, name: str = "approval_decision") -> h.HistoryEvent:
    return _event(seconds, eventRaised=h.EventRaisedEvent(name=name))


def _start(data: Any = None, *, raw: str | None = None) -> h.HistoryEvent:
    started = h.ExecutionStartedEvent(name="approval_workflow")
    if raw is not None:
        started.input.CopyFrom(wrappers_pb2.StringValue(value=raw))
    elif data is not None:
        started.input.CopyFrom(wrappers_pb2.StringValue(value=json.dumps(data)))
    return _event(executionStarted=started)


def _work_item(*events: h.HistoryEvent, instance_id: str = ID) -> pb.WorkflowRequest:
    """What daprd sends down the workflow stream: the events new since the last one."""
    return pb.WorkflowRequest(
        instanceId=instance_id,
        newEvents=[_event(workflowStarted=h.WorkflowStartedEvent()), *events],
    )


class SdkWorker:
    """Shaped like the SDK's ``TaskHubGrpcWorker``, as far as the hook goes."""

    def __init__(self, result: object = "response", error: Exception | None = None) -> None:
        self.result = result
        self.error = error
        self.runs: list[tuple[Any, ...]] = []

    def _execute_orchestrator(self, request: Any, stub: Any, completion_token: Any) -> object:
        self.runs.append((request, stub, completion_token))
        if self.error is not None:
            raise self.error
        return self.result


def _runtime(sdk_worker: object | None) -> WorkflowRuntime:
    """Shaped like ``WorkflowRuntime``: its worker in a name-mangled private attribute."""
    runtime = (
        SimpleNamespace()
        if sdk_worker is None
        else SimpleNamespace(_WorkflowRuntime__worker=sdk_worker)
    )
    return cast(WorkflowRuntime, runtime)


def _recording(hints: list[Hint]) -> Callable[[str, list[datetime], str | None], None]:
    return lambda i, raised, status: hints.append((i, list(raised), status))


def _hooked(sdk_worker: SdkWorker) -> list[Hint]:
    hints: list[Hint] = []
    assert hook.install(_runtime(sdk_worker), _recording(hints))
    return hints


def test_the_work_item_still_runs_and_its_result_is_returned() -> None:
    sdk_worker = SdkWorker(result="the response")
    _hooked(sdk_worker)
    request = _work_item(_event(executionSuspended=h.ExecutionSuspendedEvent()))
    assert sdk_worker._execute_orchestrator(request, "stub", completion_token="t") == (
        "the response"
    )
    assert sdk_worker.runs == [(request, "stub", "t")]


def test_an_error_of_the_work_item_is_raised_as_it_was() -> None:
    error = RuntimeError("boom")
    sdk_worker = SdkWorker(error=error)
    _hooked(sdk_worker)
    with pytest.raises(RuntimeError) as raised:
        sdk_worker._execute_orchestrator(_work_item(), "stub", "t")
    assert raised.value is error


# A change someone makes to a running instance, and the status it gives.
_CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"executionSuspended": h.ExecutionSuspendedEvent()}, "SUSPENDED"),
    ({"executionResumed": h.ExecutionResumedEvent()}, "RUNNING"),
    ({"executionTerminated": h.ExecutionTerminatedEvent()}, "TERMINATED"),
]
_CHANGE_IDS = ["suspended", "resumed", "terminated"]


@pytest.mark.parametrize(("change", "status"), _CHANGES, ids=_CHANGE_IDS)
def test_suspend_resume_terminate_are_hinted_with_the_status_they_give(
    change: dict[str, Any], status: str
) -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    sdk_worker._execute_orchestrator(_work_item(_event(**change)), "stub", "t")
    assert hints == [(ID, [], status)]


def test_of_several_changes_in_one_work_item_the_last_ones_status_is_hinted() -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    suspend, resume = (_event(**change) for change, _ in _CHANGES[:2])
    sdk_worker._execute_orchestrator(_work_item(suspend, resume), "stub", "t")
    sdk_worker._execute_orchestrator(_work_item(resume, suspend), "stub", "t")
    assert [status for _, _, status in hints] == ["RUNNING", "SUSPENDED"]


def test_events_raised_are_hinted_with_when_they_were_raised() -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    sdk_worker._execute_orchestrator(_work_item(_raised(1.5), _raised(2, "cancel")), "stub", "t")
    assert hints == [(ID, [T0 + timedelta(seconds=1.5), T0 + timedelta(seconds=2)], None)]


@pytest.mark.parametrize(
    "start",
    [
        _start(),
        _start({"amount": 10}),
        _start(raw="not json"),
        _start(Origin("publisher", "msg-1", instance_id="order-0").wrap({"amount": 10})),
    ],
    ids=["no-input", "plain-input", "not-json", "copy-of-another-instance"],
)
def test_a_start_the_worker_did_not_make_is_hinted(start: h.HistoryEvent) -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    sdk_worker._execute_orchestrator(_work_item(start), "stub", "t")
    assert hints == [(ID, [], "RUNNING")]


@pytest.mark.parametrize(
    "origin",
    [Origin("publisher", "msg-1"), Origin("publisher", "msg-1", instance_id=ID)],
    ids=["envelope", "envelope-naming-it"],
)
def test_a_start_the_worker_made_is_not_hinted(origin: Origin) -> None:
    """Its start message's handler reports it."""
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    sdk_worker._execute_orchestrator(_work_item(_start(origin.wrap({"a": 1}))), "stub", "t")
    assert hints == []
    assert len(sdk_worker.runs) == 1


def test_an_event_raised_into_a_start_the_worker_made_is_hinted() -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    start = _start(Origin("publisher", "msg-1").wrap({"a": 1}))
    sdk_worker._execute_orchestrator(_work_item(start, _raised(3)), "stub", "t")
    assert hints == [(ID, [T0 + timedelta(seconds=3)], "RUNNING")]


def test_steps_finishing_are_not_hinted() -> None:
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    sdk_worker._execute_orchestrator(_work_item(_start()), "stub", "t")  # met: its start
    hints.clear()
    for events in [
        [_event(taskCompleted=h.TaskCompletedEvent(taskScheduledId=1))],
        [_event(taskFailed=h.TaskFailedEvent(taskScheduledId=2))],
        [_event(timerFired=h.TimerFiredEvent(timerId=3))],
        [_event(childWorkflowInstanceCompleted=h.ChildWorkflowInstanceCompletedEvent())],
        [],
    ]:
        sdk_worker._execute_orchestrator(_work_item(*events), "stub", "t")
    assert hints == []
    assert len(sdk_worker.runs) == 6


def test_a_failing_hint_never_breaks_execution() -> None:
    sdk_worker = SdkWorker(result="ok")

    def broken(instance_id: str, raised: list[datetime], status: str | None) -> None:
        raise RuntimeError("the watch is broken")

    assert hook.install(_runtime(sdk_worker), broken)
    change = _event(executionSuspended=h.ExecutionSuspendedEvent())
    assert sdk_worker._execute_orchestrator(_work_item(change), "stub", "t") == "ok"
    # Nor does a work item it cannot read.
    assert sdk_worker._execute_orchestrator(object(), "stub", "t") == "ok"
    assert len(sdk_worker.runs) == 2


@pytest.mark.parametrize(
    "runtime",
    [_runtime(None), _runtime(object())],
    ids=["no-worker", "worker-without-the-method"],
)
def test_install_says_so_when_the_sdk_has_moved(
    runtime: WorkflowRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.watch.hook"):
        assert hook.install(runtime, lambda i, raised, status: None) is False
    assert "sweep only" in caplog.text


def _hello(ctx: DaprWorkflowContext, data: str) -> str:
    return data


class RecordingStub:
    def __init__(self) -> None:
        self.completed: list[Any] = []

    def CompleteOrchestratorTask(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.completed.append(response)


def test_the_pinned_sdk_runtime_is_hooked_and_still_runs_work_items() -> None:
    """The private method the hook wraps exists in the SDK as pinned, and a work item run
    through the real worker completes as before."""
    runtime = WorkflowRuntime()
    runtime.register_workflow(_hello)
    hints: list[Hint] = []
    assert hook.install(runtime, _recording(hints))
    sdk_worker: Any = getattr(runtime, "_WorkflowRuntime__worker")  # noqa: B009
    stub = RecordingStub()
    request = _work_item(
        _event(executionStarted=h.ExecutionStartedEvent(name="_hello", input=_json("hi")))
    )
    sdk_worker._execute_orchestrator(request, stub, "token")
    [response] = stub.completed
    assert response.instanceId == ID
    assert response.completionToken == "token"
    assert [a.completeWorkflow.result.value for a in response.actions] == ['"hi"']
    assert hints == [(ID, [], "RUNNING")]  # started by someone else


def _json(value: Any) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=json.dumps(value))


def test_the_first_work_item_of_a_rerun_is_hinted() -> None:
    """A rerun's copied start is among the past events; its new events are only steps."""
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    item = _work_item(_event(taskCompleted=h.TaskCompletedEvent(taskScheduledId=0)))
    item.pastEvents.append(_start({"order": 1}))
    sdk_worker._execute_orchestrator(item, "stub", "t")
    assert hints == [(ID, [], None)]
    sdk_worker._execute_orchestrator(item, "stub", "t")  # met before: steps are not hinted
    assert hints == [(ID, [], None)]


@pytest.mark.parametrize(("change", "status"), _CHANGES, ids=_CHANGE_IDS)
@pytest.mark.parametrize("met_before", [True, False], ids=["met-before", "first-met"])
def test_a_change_to_an_instance_the_worker_started_is_hinted(
    change: dict[str, Any], status: str, met_before: bool
) -> None:
    """Its start is among the past events of every later work item: what the work item
    carries now is a change of its own (an operator's `dapr workflow suspend`, say)."""
    sdk_worker = SdkWorker()
    hints: list[Hint] = []
    ours: list[str] = []
    hook.install(
        _runtime(sdk_worker),
        lambda i, raised, status: hints.append((i, list(raised), status)),
        ours.append,
    )
    start = _start(Origin("publisher", "msg-1").wrap({"a": 1}))
    if met_before:
        sdk_worker._execute_orchestrator(_work_item(start), "stub", "t")
        assert (hints, ours) == ([], [ID])
    item = _work_item(_event(**change))
    item.pastEvents.append(start)
    sdk_worker._execute_orchestrator(item, "stub", "t")
    assert hints == [(ID, [], status)]
    assert ours == [ID]  # a restart meeting it mid-way still takes it as the worker's


def test_a_new_generation_of_a_run_the_worker_started_is_not_hinted() -> None:
    """continue-as-new: each generation starts with the worker's envelope (the next
    generation's), and nothing else changed."""
    sdk_worker = SdkWorker()
    hints = _hooked(sdk_worker)
    origin = Origin("publisher", "msg-1")
    sdk_worker._execute_orchestrator(_work_item(_start(origin.wrap(0))), "stub", "t")
    sdk_worker._execute_orchestrator(
        _work_item(_start(origin.next_generation().wrap(1))), "stub", "t"
    )
    assert hints == []
