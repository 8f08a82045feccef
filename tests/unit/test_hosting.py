"""The `reporting` wrapper: a hosted workflow reports its start, completion or failure."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from tests.unit.fakes import FakePublishClient
from worker.config import Settings
from worker.events import EVENT_TYPE_PREFIX
from worker.hosting import (
    REPORT_ACTIVITY,
    WorkflowRegistry,
    report_activity,
    reporting,
)
from worker.origin import Origin, unwrap
from worker.publisher import Outbound, StatusPublisher

_STARTED_AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Task:
    """What `call_activity` returns: a token the workflow yields."""

    def __init__(self, name: str, payload: Any) -> None:
        self.name = name
        self.payload = payload


@dataclass
class FakeContext:
    instance_id: str = "order-1"
    current_utc_datetime: datetime = _STARTED_AT
    activities: list[tuple[str, Any, Any]] = field(default_factory=list)
    continued: list[tuple[Any, bool]] = field(default_factory=list)

    def call_activity(self, name: str, *, input: Any = None, retry_policy: Any = None) -> Task:
        self.activities.append((name, input, retry_policy))
        return Task(name, input)

    def continue_as_new(self, new_input: Any, *, save_events: bool = False) -> None:
        self.continued.append((new_input, save_events))


def run(
    fn: Callable[..., Any], ctx: FakeContext, data: Any = None, name: str = "wf"
) -> Generator[Any, Any, Any]:
    wrapper = reporting(fn, name)
    return wrapper(cast(Any, ctx), data)


def _finish(gen: Generator[Any, Any, Any], value: Any = None) -> Any:
    with pytest.raises(StopIteration) as info:
        gen.send(value)
    return info.value.value


def _report_of(task: Any) -> Outbound:
    assert isinstance(task, Task)
    assert task.name == REPORT_ACTIVITY
    return Outbound.from_record(task.payload)


def one_task_then_five(ctx: Any, data: Any) -> Generator[Any, Any, int]:
    answer = yield ctx.call_activity("work", input=data)
    assert answer == "work done"
    return 5


def test_completion_is_reported_after_the_workflow_returns() -> None:
    ctx = FakeContext()
    gen = run(one_task_then_five, ctx, data={"n": 1})

    task = next(gen)
    assert isinstance(task, Task)
    assert (task.name, task.payload) == ("work", {"n": 1})  # no start report: not from a message

    report = gen.send("work done")
    outbound = _report_of(report)
    event = outbound.event
    assert event.event.value == "completed"
    assert event.output == 5
    assert event.status == "COMPLETED"
    assert event.previous_status == "RUNNING"
    assert event.instance_id == "order-1"
    assert event.workflow == "wf"
    assert event.occurred_at == _STARTED_AT
    assert event.created_at == _STARTED_AT
    assert event.cloudevent_type() == EVENT_TYPE_PREFIX + "completed"
    [_, (name, _, retry_policy)] = ctx.activities
    assert name == REPORT_ACTIVITY
    assert retry_policy is not None

    assert _finish(gen) == 5


def test_a_delayed_start_reports_started_first() -> None:
    ctx = FakeContext()
    seen: list[Any] = []

    def workflow(ctx: Any, data: Any) -> Generator[Any, Any, str]:
        seen.append(data)
        yield ctx.call_activity("work", input=data)
        return "ok"

    gen = run(workflow, ctx, data=Origin("ops", "msg-42", report_start=True).wrap({"order": 7}))
    started = _report_of(next(gen))
    assert started.event.event.value == "started"
    assert started.event.status == "RUNNING"
    assert started.event.correlation_id == "msg-42"
    assert seen == []  # reported before the workflow ran

    task = gen.send(None)
    assert seen == [{"order": 7}]  # the workflow gets its own input, unwrapped
    assert isinstance(task, Task)
    assert task.name == "work"

    completed = _report_of(gen.send(None))
    assert completed.event.event.value == "completed"
    assert completed.event_id != started.event_id
    assert _finish(gen) == "ok"


@pytest.mark.parametrize("user_input", [False, 0, {}, None, "text", [1]])
def test_wrapped_input_round_trips(user_input: Any) -> None:
    origin, data = unwrap(Origin("ops", "m", 2).wrap(user_input))
    assert origin == Origin("ops", "m", 2)
    assert data == user_input
    assert type(data) is type(user_input)


def test_unwrapped_input_passes_unchanged() -> None:
    for value in ({"input": 1}, {"a": 1}, [1], None, "x"):
        assert unwrap(value) == (None, value)


def test_event_ids_follow_the_message_not_the_clock() -> None:
    """A run re-executed after a crash (another start time) reports under the same ids."""

    def workflow(ctx: Any, data: Any) -> str:
        return "ok"

    data = Origin("ops", "msg-1", report_start=True).wrap(None)
    first, second = FakeContext(), FakeContext()
    second.current_utc_datetime = datetime(2030, 1, 1, tzinfo=UTC)
    ids = []
    for ctx in (first, second):
        gen = run(workflow, ctx, data=data)
        started = _report_of(next(gen))
        completed = _report_of(gen.send(None))
        ids.append((started.event_id, completed.event_id))
    assert ids[0] == ids[1]


def test_continue_as_new_keeps_the_origin_and_reports_started_once() -> None:
    ctx = FakeContext()

    def workflow(ctx: Any, n: Any) -> None:
        ctx.continue_as_new(n + 1)

    gen = run(workflow, ctx, data=Origin("ops", "msg-1", report_start=True).wrap(1))
    assert _report_of(next(gen)).event.event.value == "started"
    with pytest.raises(StopIteration):
        gen.send(None)
    ((new_input, _),) = ctx.continued
    origin, data = unwrap(new_input)
    assert (origin, data) == (Origin("ops", "msg-1", 1, report_start=True), 2)
    gen = run(workflow, FakeContext(), data=new_input)
    with pytest.raises(StopIteration):
        next(gen)  # generation 1: no second `started`, and no `completed` either


def test_failure_is_reported_then_the_error_re_raised() -> None:
    ctx = FakeContext()
    error = ValueError("amount must be positive")

    def workflow(ctx: Any, data: Any) -> Generator[Any, Any, None]:
        yield ctx.call_activity("work", input=data)
        raise error

    gen = run(workflow, ctx)
    next(gen)
    report = _report_of(gen.send("result"))
    assert report.event.event.value == "failed"
    assert report.event.status == "FAILED"
    assert report.event.previous_status == "RUNNING"
    assert report.event.failure is not None
    assert report.event.failure.message == "amount must be positive"
    assert report.event.failure.type == "ValueError"

    with pytest.raises(ValueError) as info:
        gen.send(None)
    assert info.value is error


def test_failed_activity_thrown_into_the_workflow_is_reported() -> None:
    ctx = FakeContext()
    gen = run(one_task_then_five, ctx)
    next(gen)
    report = _report_of(gen.throw(RuntimeError("activity failed")))
    assert report.event.event.value == "failed"
    assert report.event.failure is not None
    assert report.event.failure.type == "RuntimeError"
    with pytest.raises(RuntimeError, match="activity failed"):
        gen.send(None)


def test_plain_function_workflow_is_reported() -> None:
    ctx = FakeContext()

    def plain(ctx: Any) -> dict[str, int]:  # takes no input
        return {"total": 3}

    gen = run(plain, ctx, data="ignored")
    report = _report_of(next(gen))
    assert report.event.event.value == "completed"
    assert report.event.output == {"total": 3}
    assert _finish(gen) == {"total": 3}


def test_plain_function_raising_is_reported() -> None:
    ctx = FakeContext()

    def plain(ctx: Any, data: Any) -> None:
        raise KeyError("missing")

    gen = run(plain, ctx)
    report = _report_of(next(gen))
    assert report.event.event.value == "failed"
    with pytest.raises(KeyError):
        gen.send(None)


def test_continue_as_new_is_not_reported_as_completed() -> None:
    ctx = FakeContext()

    def counter(ctx: Any, data: Any) -> Generator[Any, Any, None]:
        yield ctx.call_activity("tick", input=data)
        ctx.continue_as_new(data + 1, save_events=True)

    gen = run(counter, ctx, data=1)
    next(gen)
    assert _finish(gen, "ticked") is None
    assert ctx.continued == [(2, True)]
    assert [a[0] for a in ctx.activities] == ["tick"]  # no report activity


def test_report_failure_does_not_fail_the_workflow() -> None:
    ctx = FakeContext()
    gen = run(one_task_then_five, ctx)
    next(gen)
    _report_of(gen.send("work done"))
    # The report activity failed for good (after its retries): the result still stands.
    with pytest.raises(StopIteration) as info:
        gen.throw(RuntimeError("broker down"))
    assert info.value.value == 5


def _completed_id(instance_id: str, when: datetime = _STARTED_AT) -> str:
    ctx = FakeContext(instance_id=instance_id, current_utc_datetime=when)
    gen = run(one_task_then_five, ctx)
    next(gen)
    return _report_of(gen.send("work done")).event_id


def test_event_id_is_stable_under_replay() -> None:
    assert _completed_id("order-1") == _completed_id("order-1")


def test_event_id_differs_per_instance_and_run() -> None:
    first = _completed_id("order-1")
    assert first != _completed_id("order-2")
    # Same id started again later (replace, or after a purge): a new run, new ids.
    assert first != _completed_id("order-1", datetime(2026, 11, 23, tzinfo=UTC))


def test_wrapper_keeps_name_and_doc() -> None:
    def documented(ctx: Any) -> None:
        """Does things."""

    wrapper = reporting(documented, "custom_name")
    assert wrapper.__name__ == "custom_name"
    assert wrapper.__doc__ == "Does things."


@dataclass
class FakeRuntime:
    workflows: list[tuple[Any, str]] = field(default_factory=list)
    activities: list[tuple[Any, str | None]] = field(default_factory=list)

    def register_workflow(self, fn: Any, *, name: str) -> None:
        self.workflows.append((fn, name))

    def register_activity(self, fn: Any, *, name: str | None = None) -> None:
        self.activities.append((fn, name))


def test_registry_wraps_workflows_and_refuses_duplicates() -> None:
    runtime = FakeRuntime()
    registry = WorkflowRegistry(cast(Any, runtime))

    def my_workflow(ctx: Any) -> int:
        return 1

    registry.workflow(my_workflow)
    registry.workflow(my_workflow, name="other")
    assert registry.workflow_names == ["my_workflow", "other"]
    assert [n for _, n in runtime.workflows] == ["my_workflow", "other"]
    assert runtime.workflows[0][0] is not my_workflow  # wrapped
    with pytest.raises(ValueError, match="registered twice"):
        registry.workflow(my_workflow)


def test_an_immediate_start_reports_only_its_end_and_names_its_start_message() -> None:
    """The handler published `started`; the completion report must wait for it."""

    def workflow(ctx: Any, data: Any) -> str:
        return f"done {data}"

    ctx = FakeContext()
    gen = run(workflow, ctx, data=Origin("ops", "msg-9").wrap(3))
    completed = next(gen)
    assert completed.name == REPORT_ACTIVITY
    assert completed.payload["event"]["event"] == "completed"
    assert completed.payload["after"] == {"source": "ops", "message_id": "msg-9"}
    assert _finish(gen) == "done 3"


def test_a_workflow_started_elsewhere_reports_without_waiting() -> None:
    def workflow(ctx: Any, data: Any) -> str:
        return "x"

    gen = run(workflow, FakeContext(), data={"plain": "input"})
    completed = next(gen)
    assert "after" not in completed.payload


def test_the_report_activity_stamps_when_it_runs_not_the_replay_clock() -> None:
    """On replay a workflow's clock is its start time: a `completed` stamped with it would
    sort before the instance's `started` and before the events raised into it."""
    client = FakePublishClient()
    activity = report_activity(StatusPublisher(client, Settings(app_id="w")))
    gen = run(one_task_then_five, FakeContext(), data={"n": 1})
    next(gen)
    record = gen.send("work done").payload
    before = datetime.now(UTC)
    activity(cast(Any, None), record)
    [body] = client.bodies()
    assert body["event"] == "completed"
    occurred = datetime.fromisoformat(body["occurred_at"])
    assert occurred >= before > _STARTED_AT
    assert occurred.utcoffset() is not None
    assert datetime.fromisoformat(body["created_at"]) == _STARTED_AT  # the start stays
