"""`workflow.start`: one instance per message, never a second start of a live id."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tests.unit.fakes import FakeGateway, StartMadeAnswerLost, inbound, state
from worker.events import EventType
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound
from worker.handlers.start import StartHandler, derived_instance_id
from worker.idempotency import Begin, Claim
from worker.messages import StartWorkflow
from worker.origin import Origin, unwrap
from worker.outcomes import RejectCode, Rejected, Transient

ALLOWED = ("approval_workflow", "counter_workflow")
NEW = Claim(Begin.NEW, "key")


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def handler(gateway: FakeGateway) -> StartHandler:
    return StartHandler(cast(WorkflowGateway, gateway), ALLOWED)


def start_message(message_id: str = "msg-1", source: str = "tests", **body: Any) -> Inbound:
    return inbound(
        {"workflow": "approval_workflow", **body},
        topic="workflow.start",
        message_id=message_id,
        source=source,
    )


def test_derived_instance_id_is_stable_per_message() -> None:
    first = derived_instance_id("approval_workflow", start_message("m1"))
    again = derived_instance_id("approval_workflow", start_message("m1", input={"other": "body"}))
    assert first == again
    assert first.startswith("approval_workflow-")
    assert first != derived_instance_id("approval_workflow", start_message("m2"))
    assert first != derived_instance_id("approval_workflow", start_message("m1", source="x"))
    # A derived id is itself a valid instance id.
    StartWorkflow.model_validate({"workflow": "w", "instance_id": first})


def _started(gateway: FakeGateway) -> list[tuple[Any, ...]]:
    return [c for c in gateway.calls if c[0] == "start"]


def test_starts_under_the_derived_id(handler: StartHandler, gateway: FakeGateway) -> None:
    user_input = {"order_id": "1001", "approved": False}
    message = start_message(input=user_input)
    events = handler.handle(message, NEW)

    expected_id = derived_instance_id("approval_workflow", message)
    assert gateway.calls == [
        ("get_state", expected_id, True),
        (
            "start",
            "approval_workflow",
            expected_id,
            Origin("tests", "msg-1", instance_id=expected_id).wrap(user_input),
            None,
        ),
    ]
    # An immediate start is reported here; the workflow's completion report waits for it.
    [started] = events
    assert (started.event.event, started.event.status) == (EventType.STARTED, "RUNNING")
    assert started.event.correlation_id == "msg-1"
    assert started.event.instance_id == expected_id


def test_start_input_carries_the_message_id_for_the_workflow(
    handler: StartHandler, gateway: FakeGateway
) -> None:
    inputs: list[Any] = [False, 0, {}, None, [1, 2]]
    for user_input in inputs:
        gateway.calls.clear()
        handler.handle(start_message("msg-7", input=user_input), NEW)
        [(_, _, _, data, _)] = _started(gateway)
        origin, unwrapped = unwrap(data)
        assert origin is not None
        assert (origin.source, origin.message_id) == ("tests", "msg-7")
        assert origin.started(derived_instance_id("approval_workflow", start_message("msg-7")))
        assert unwrapped == user_input
        assert type(unwrapped) is type(user_input)


def test_redelivered_scheduled_message_reports_the_same_event_id(handler: StartHandler) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    [first] = handler.handle(start_message(start_at=later), NEW)
    [second] = handler.handle(start_message(start_at=later), NEW)
    [other] = handler.handle(start_message("msg-2", start_at=later), NEW)
    assert first.event_id == second.event_id
    assert first.event_id != other.event_id


def test_explicit_instance_id_is_used(handler: StartHandler, gateway: FakeGateway) -> None:
    handler.handle(start_message(instance_id="order-1001"), NEW)
    assert gateway.mutations() == [
        (
            "start",
            "approval_workflow",
            "order-1001",
            Origin("tests", "msg-1", instance_id="order-1001").wrap(None),
            None,
        )
    ]


def test_workflow_not_allowed_is_rejected(handler: StartHandler, gateway: FakeGateway) -> None:
    message = inbound({"workflow": "evil_workflow"}, topic="workflow.start")
    with pytest.raises(Rejected) as info:
        handler.handle(message, NEW)
    assert "'evil_workflow' is not allowed" in info.value.reason
    assert "approval_workflow, counter_workflow" in info.value.reason
    assert info.value.code is RejectCode.UNKNOWN_WORKFLOW
    assert gateway.calls == []


def test_empty_allowlist_says_none(gateway: FakeGateway) -> None:
    handler = StartHandler(cast(WorkflowGateway, gateway), ())
    with pytest.raises(Rejected) as info:
        handler.handle(start_message(), NEW)
    assert info.value.reason.endswith("allowed: none")


def test_invalid_message_is_rejected_before_any_call(
    handler: StartHandler, gateway: FakeGateway
) -> None:
    with pytest.raises(Rejected) as info:
        handler.handle(start_message(instance_id="has space"), NEW)
    assert "instance_id" in info.value.reason
    assert info.value.code is RejectCode.INVALID_MESSAGE
    assert gateway.calls == []


@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "SUSPENDED", "STALLED"])
def test_active_existing_instance_is_rejected(
    handler: StartHandler, gateway: FakeGateway, status: str
) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)  # long past any doubt
    gateway.states["order-1"] = state("order-1", status, created_at=an_hour_ago)
    with pytest.raises(Rejected) as info:
        handler.handle(start_message(instance_id="order-1", replace=True), NEW)
    assert status in info.value.reason
    assert "already exists" in info.value.reason
    assert info.value.status == status
    assert info.value.instance_id == "order-1"
    assert info.value.workflow == "approval_workflow"
    assert info.value.code is RejectCode.INSTANCE_EXISTS
    assert gateway.mutations() == []


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
def test_finished_instance_without_replace_is_rejected(
    handler: StartHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    with pytest.raises(Rejected) as info:
        handler.handle(start_message(instance_id="order-1"), NEW)
    assert "replace" in info.value.reason
    assert status in info.value.reason
    assert info.value.status == status
    assert info.value.code is RejectCode.INSTANCE_EXISTS
    assert gateway.mutations() == []


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
def test_finished_instance_with_replace_is_started_again(
    handler: StartHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    events = handler.handle(start_message(instance_id="order-1", replace=True), NEW)
    assert [e.event.event for e in events] == [EventType.STARTED]
    assert gateway.mutations() == [
        (
            "start",
            "approval_workflow",
            "order-1",
            Origin("tests", "msg-1", instance_id="order-1").wrap(None),
            None,
        )
    ]


def test_future_start_at_is_scheduled(handler: StartHandler, gateway: FakeGateway) -> None:
    start_at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    [outbound] = handler.handle(
        start_message(instance_id="order-1", start_at=start_at.isoformat()), NEW
    )
    assert gateway.mutations() == [
        (
            "start",
            "approval_workflow",
            "order-1",
            Origin("tests", "msg-1", report_start=True, instance_id="order-1").wrap(None),
            start_at,
        )
    ]
    event = outbound.event
    assert event.event is EventType.SCHEDULED
    assert event.status == "PENDING"
    assert event.instance_id == "order-1"
    assert event.workflow == "approval_workflow"
    assert event.correlation_id == "msg-1"


def test_past_start_at_is_an_immediate_start(handler: StartHandler, gateway: FakeGateway) -> None:
    events = handler.handle(
        start_message(instance_id="order-1", start_at="2020-01-01T00:00:00Z"), NEW
    )
    assert [e.event.event for e in events] == [EventType.STARTED]  # no `scheduled`
    assert len(_started(gateway)) == 1


def test_an_instance_this_message_started_is_recognised_not_rejected(
    handler: StartHandler, gateway: FakeGateway
) -> None:
    """The first delivery started it but its answer was lost (sidecar died mid-call)."""
    gateway.states["order-1"] = replace(
        state("order-1", "COMPLETED"), origin=Origin("tests", "msg-1")
    )
    events = handler.handle(start_message(instance_id="order-1"), NEW)
    assert [e.event.event for e in events] == [EventType.STARTED]  # reported again, same id
    assert (
        events[0].event_id == handler.handle(start_message(instance_id="order-1"), NEW)[0].event_id
    )
    assert gateway.mutations() == []  # not started twice, and not rejected


@pytest.mark.parametrize(
    "origin", [None, Origin("tests", "msg-other"), Origin("elsewhere", "msg-1")]
)
def test_an_instance_another_message_started_is_rejected(
    handler: StartHandler, gateway: FakeGateway, origin: Origin | None
) -> None:
    gateway.states["order-1"] = replace(state("order-1", "RUNNING"), origin=origin)
    with pytest.raises(Rejected, match="already exists"):
        handler.handle(start_message(instance_id="order-1"), NEW)
    assert gateway.mutations() == []


def _refusing_gateway() -> StartMadeAnswerLost:
    """Creates the instance, then answers ALREADY_EXISTS (a sidecar retry in a fail-over)."""
    return StartMadeAnswerLost(
        answer=lambda workflow, instance_id: Rejected(
            f"start {workflow} as {instance_id}: instance already exists"
        )
    )


def test_a_refused_start_that_in_fact_created_the_instance_is_a_success() -> None:
    gateway = _refusing_gateway()
    handler = StartHandler(cast(WorkflowGateway, gateway), ALLOWED)
    events = handler.handle(start_message(instance_id="order-1"), NEW)
    assert [e.event.event for e in events] == [EventType.STARTED]


def test_a_refused_start_of_someone_elses_instance_stays_rejected() -> None:
    gateway = _refusing_gateway()
    handler = StartHandler(cast(WorkflowGateway, gateway), ALLOWED)

    def other_message_wins(workflow: str, instance_id: str, data: Any, start_at: Any) -> None:
        gateway.states[instance_id] = replace(
            state(instance_id, "RUNNING"), origin=Origin("tests", "msg-other")
        )
        raise Rejected("instance already exists")

    gateway.start = other_message_wins  # type: ignore[method-assign]
    with pytest.raises(Rejected, match="already exists"):
        handler.handle(start_message(instance_id="order-1"), NEW)


def test_a_refused_start_whose_instance_has_not_run_yet_is_retried_not_rejected() -> None:
    """Seen in a replica kill: the sidecar created the instance, answered ALREADY_EXISTS, and
    the instance was still PENDING, so its input (and origin) was not visible yet."""
    gateway = _refusing_gateway()
    handler = StartHandler(cast(WorkflowGateway, gateway), ALLOWED)

    def created_but_not_run(workflow: str, instance_id: str, data: Any, start_at: Any) -> None:
        just_now = datetime.now(UTC).replace(tzinfo=None)
        gateway.states[instance_id] = state(instance_id, "PENDING", created_at=just_now)
        raise Rejected("an active workflow with this ID already exists")

    gateway.start = created_but_not_run  # type: ignore[method-assign]
    with pytest.raises(Transient, match="PENDING"):
        handler.handle(start_message(instance_id="order-1"), NEW)


def test_started_carries_creation_time(handler: StartHandler) -> None:
    before = datetime.now(UTC)
    [started] = handler.handle(start_message(instance_id="order-9"), NEW)
    assert started.event.created_at is not None
    assert before <= started.event.created_at <= datetime.now(UTC)
    assert started.event.last_updated_at == started.event.created_at


@pytest.mark.parametrize("created", ["just-now", "zero-timestamp", "unknown"])
def test_a_pending_instance_of_unknown_origin_is_asked_about_again(
    handler: StartHandler, gateway: FakeGateway, created: str
) -> None:
    """Created by a start that timed out, not yet run: the sidecar shows no input yet."""
    created_at = {
        "just-now": datetime.now(UTC).replace(tzinfo=None),  # the SDK's naive UTC
        "zero-timestamp": datetime(1970, 1, 1),  # how the sidecar shows "not set"
        "unknown": None,
    }[created]
    gateway.states["order-1"] = state("order-1", "PENDING", created_at=created_at)
    with pytest.raises(Transient, match="PENDING"):
        handler.handle(start_message(instance_id="order-1"), NEW)
    assert gateway.mutations() == []
