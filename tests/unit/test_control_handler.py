"""`workflow.control`: each action only from the states where it makes sense."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tests.unit.fakes import FakeGateway, FakeStateClient, inbound, state
from worker.events import EventType
from worker.gateway import InstanceState, WorkflowGateway
from worker.handlers.control import ControlHandler
from worker.idempotency import Begin, Claim
from worker.outcomes import Missing, RejectCode, Rejected
from worker.publisher import Outbound
from worker.purges import Purges

CLAIM = Claim(Begin.NEW, "key")


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def handler(gateway: FakeGateway) -> ControlHandler:
    return ControlHandler(cast(WorkflowGateway, gateway))


def control(
    handler: ControlHandler, body: dict[str, Any], message_id: str = "msg-1"
) -> list[Outbound]:
    return handler.handle(inbound(body, message_id=message_id), CLAIM)


def _rejection(handler: ControlHandler, body: dict[str, Any]) -> Rejected:
    with pytest.raises(Rejected) as info:
        control(handler, body)
    return info.value


def _ago(**delta: float) -> datetime:
    """A naive UTC time in the past, as the SDK returns created_at."""
    return (datetime.now(UTC) - timedelta(**delta)).replace(tzinfo=None)


# --- suspend / resume / terminate ------------------------------------------------------------


@pytest.mark.parametrize("status", ["RUNNING", "PENDING"])
def test_suspend_running_instance(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    created = _ago(minutes=3)
    gateway.states["order-1"] = state("order-1", status, created_at=created)
    [outbound] = control(
        handler, {"action": "suspend", "instance_id": "order-1", "reason": "maintenance"}
    )
    assert gateway.mutations() == [("suspend", "order-1", "maintenance")]
    event = outbound.event
    assert event.event is EventType.SUSPENDED
    assert event.status == "SUSPENDED"
    assert event.previous_status == status
    assert event.reason == "maintenance"
    assert event.instance_id == "order-1"
    assert event.workflow == "approval_workflow"
    assert event.correlation_id == "msg-1"
    assert event.created_at == created.replace(tzinfo=UTC)  # published with its offset


@pytest.mark.parametrize("status", ["SUSPENDED", "COMPLETED", "FAILED", "TERMINATED"])
def test_suspend_of_not_running_is_rejected(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    rejected = _rejection(handler, {"action": "suspend", "instance_id": "order-1"})
    assert f"instance is {status}" in rejected.reason
    assert rejected.reason.startswith("cannot suspend order-1")
    assert rejected.status == status
    assert rejected.instance_id == "order-1"
    assert rejected.workflow == "approval_workflow"
    assert gateway.mutations() == []


def test_resume_suspended_instance(handler: ControlHandler, gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "SUSPENDED")
    [outbound] = control(handler, {"action": "resume", "instance_id": "order-1"})
    assert gateway.mutations() == [("resume", "order-1", None)]
    assert outbound.event.event is EventType.RESUMED
    assert outbound.event.status == "RUNNING"
    assert outbound.event.previous_status == "SUSPENDED"


@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "COMPLETED"])
def test_resume_of_not_suspended_is_rejected(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    rejected = _rejection(handler, {"action": "resume", "instance_id": "order-1"})
    assert "cannot resume" in rejected.reason
    assert status in rejected.reason
    assert gateway.mutations() == []


@pytest.mark.parametrize("status", ["RUNNING", "SUSPENDED", "PENDING"])
def test_terminate_active_instance(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    [outbound] = control(
        handler,
        {"action": "terminate", "instance_id": "order-1", "output": False, "recursive": False},
    )
    assert gateway.mutations() == [("terminate", "order-1", False, False)]
    event = outbound.event
    assert event.event is EventType.TERMINATED
    assert event.status == "TERMINATED"
    assert event.previous_status == status
    assert event.output is False


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
def test_terminate_of_finished_is_rejected(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    rejected = _rejection(handler, {"action": "terminate", "instance_id": "order-1"})
    assert "already finished" in rejected.reason
    assert gateway.mutations() == []


@pytest.mark.parametrize(
    "body",
    [
        {"action": "suspend", "instance_id": "ghost"},
        {"action": "resume", "instance_id": "ghost"},
        {"action": "terminate", "instance_id": "ghost"},
        {"action": "purge", "instance_id": "ghost"},
        {"action": "query", "instance_id": "ghost"},
    ],
)
def test_unknown_instance_is_missing(
    handler: ControlHandler, gateway: FakeGateway, body: dict[str, Any]
) -> None:
    """Not rejected here: the pipeline parks it, as its start may be just behind it."""
    with pytest.raises(Missing) as info:
        handler.handle(inbound(body), CLAIM)
    assert info.value.instance_id == "ghost"
    assert gateway.mutations() == []


def test_invalid_control_message_is_rejected(handler: ControlHandler, gateway: FakeGateway) -> None:
    rejected = _rejection(handler, {"action": "pause", "instance_id": "order-1"})
    assert rejected.reason.startswith("invalid message")
    assert gateway.calls == []


# --- query -----------------------------------------------------------------------------------


def test_query_reports_state_with_payloads(handler: ControlHandler, gateway: FakeGateway) -> None:
    gateway.states["order-1"] = InstanceState(
        instance_id="order-1",
        workflow="approval_workflow",
        status="FAILED",
        created_at=_ago(hours=1),
        last_updated_at=_ago(minutes=1),
        input={"amount": 5},
        output=None,
        custom_status="waiting",
        failure_message="boom",
        failure_type="ValueError",
    )
    [outbound] = control(handler, {"action": "query", "instance_id": "order-1"})
    assert gateway.calls == [("get_state", "order-1", True)]
    event = outbound.event
    assert event.event is EventType.STATE
    assert event.status == "FAILED"
    assert event.input == {"amount": 5}
    assert event.custom_status == "waiting"
    assert event.failure is not None
    assert (event.failure.message, event.failure.type) == ("boom", "ValueError")


# --- purge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
def test_purge_single_finished_instance(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    [outbound] = control(handler, {"action": "purge", "instance_id": "order-1"})
    assert gateway.mutations() == [("purge", "order-1", True)]
    assert outbound.event.event is EventType.PURGED
    assert outbound.event.status == "PURGED"
    assert outbound.event.previous_status == status


@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "SUSPENDED"])
def test_purge_of_active_instance_is_rejected(
    handler: ControlHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    rejected = _rejection(handler, {"action": "purge", "instance_id": "order-1"})
    assert "cannot purge" in rejected.reason
    assert status in rejected.reason
    assert gateway.mutations() == []


def _noting(gateway: FakeGateway) -> tuple[ControlHandler, Purges]:
    purges = Purges(FakeStateClient(), "statestore", ttl_seconds=3600)
    return ControlHandler(cast(WorkflowGateway, gateway), purges=purges), purges


def test_a_purge_is_noted_with_when_it_was_made(gateway: FakeGateway) -> None:
    handler, purges = _noting(gateway)
    gateway.states["order-1"] = state("order-1", "COMPLETED")
    gateway.states["order-2"] = state("order-2", "RUNNING")
    [outbound] = control(handler, {"action": "purge", "instance_id": "order-1"})
    assert purges.purged_at("order-1") == outbound.event.occurred_at
    with pytest.raises(Rejected):
        control(handler, {"action": "purge", "instance_id": "order-2"}, message_id="msg-2")
    assert purges.purged_at("order-2") is None  # not purged: nothing noted


def test_a_purge_made_before_a_crash_is_noted_by_the_delivery_that_takes_over(
    gateway: FakeGateway,
) -> None:
    handler, purges = _noting(gateway)
    handler.handle(inbound({"action": "purge", "instance_id": "order-1"}), TAKEN_OVER)
    assert purges.purged_at("order-1") is not None


@pytest.fixture
def fleet(gateway: FakeGateway) -> FakeGateway:
    gateway.states.update(
        {
            "old-completed": state("old-completed", "COMPLETED", created_at=_ago(days=40)),
            "old-failed": state("old-failed", "FAILED", created_at=_ago(days=40)),
            "new-terminated": state("new-terminated", "TERMINATED", created_at=_ago(days=1)),
            "new-completed": state("new-completed", "COMPLETED", created_at=_ago(minutes=5)),
            "old-running": state("old-running", "RUNNING", created_at=_ago(days=40)),
            "old-suspended": state("old-suspended", "SUSPENDED", created_at=_ago(days=40)),
            "old-pending": state("old-pending", "PENDING", created_at=_ago(days=40)),
            "undated-failed": state("undated-failed", "FAILED", created_at=None),
        }
    )
    return gateway


def _purged(gateway: FakeGateway) -> list[str]:
    return [c[1] for c in gateway.calls if c[0] == "purge"]


def _check_bulk(events: list[Outbound], purged: list[str]) -> None:
    *each, summary = events
    assert [e.event.instance_id for e in each] == purged
    assert all(e.event.event is EventType.PURGED for e in each)
    assert all(e.event.status == "PURGED" for e in each)
    assert summary.event.event is EventType.PURGED
    assert summary.event.instance_id is None
    assert summary.event.count == len(purged)
    assert f"removed {len(purged)} instance(s)" in (summary.event.reason or "")
    assert len({e.event_id for e in events}) == len(events)


def test_each_instance_a_bulk_purge_removes_is_noted(fleet: FakeGateway) -> None:
    handler, purges = _noting(fleet)
    events = control(handler, {"action": "purge", "statuses": ["FAILED"]})
    noted = {i for i in fleet.states if purges.purged_at(i) is not None}
    assert noted == {e.event.instance_id for e in events[:-1]} == {"old-failed", "undated-failed"}


def test_bulk_purge_by_status(handler: ControlHandler, fleet: FakeGateway) -> None:
    events = control(handler, {"action": "purge", "statuses": ["FAILED", "TERMINATED"]})
    assert sorted(_purged(fleet)) == ["new-terminated", "old-failed", "undated-failed"]
    _check_bulk(events, _purged(fleet))
    previous = {e.event.instance_id: e.event.previous_status for e in events[:-1]}
    assert previous["old-failed"] == "FAILED"
    assert previous["new-terminated"] == "TERMINATED"


def test_bulk_purge_older_than(handler: ControlHandler, fleet: FakeGateway) -> None:
    events = control(handler, {"action": "purge", "older_than": "720h"})
    assert sorted(_purged(fleet)) == ["old-completed", "old-failed"]
    _check_bulk(events, _purged(fleet))


def test_bulk_purge_older_than_and_status(handler: ControlHandler, fleet: FakeGateway) -> None:
    events = control(handler, {"action": "purge", "older_than": "P2D", "statuses": ["FAILED"]})
    assert _purged(fleet) == ["old-failed"]
    _check_bulk(events, ["old-failed"])


def test_bulk_purge_older_than_boundary(handler: ControlHandler, fleet: FakeGateway) -> None:
    control(handler, {"action": "purge", "older_than": "2h"})
    assert sorted(_purged(fleet)) == ["new-terminated", "old-completed", "old-failed"]


def test_bulk_purge_without_filters_takes_every_finished_one(
    handler: ControlHandler, fleet: FakeGateway
) -> None:
    events = control(handler, {"action": "purge", "recursive": False})
    assert sorted(_purged(fleet)) == [
        "new-completed",
        "new-terminated",
        "old-completed",
        "old-failed",
        "undated-failed",
    ]
    assert all(c[2] is False for c in fleet.calls if c[0] == "purge")
    _check_bulk(events, _purged(fleet))


def test_bulk_purge_never_touches_active_instances(
    handler: ControlHandler, fleet: FakeGateway
) -> None:
    control(handler, {"action": "purge", "older_than": "1s"})
    assert not {"old-running", "old-suspended", "old-pending"} & set(_purged(fleet))


def test_bulk_purge_accepts_aware_created_at(handler: ControlHandler, gateway: FakeGateway) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    gateway.states["aware"] = state("aware", "COMPLETED", created_at=old)
    control(handler, {"action": "purge", "older_than": "48h"})
    assert _purged(gateway) == ["aware"]


def test_bulk_purge_skips_instances_gone_meanwhile(
    handler: ControlHandler, fleet: FakeGateway
) -> None:
    fleet.purge_rejects.add("old-failed")
    events = control(handler, {"action": "purge", "older_than": "720h"})
    *each, summary = events
    assert [e.event.instance_id for e in each] == ["old-completed"]
    assert summary.event.count == 1


def test_bulk_purge_with_nothing_to_do(handler: ControlHandler, gateway: FakeGateway) -> None:
    gateway.states["running"] = state("running", "RUNNING", created_at=_ago(days=99))
    [summary] = control(handler, {"action": "purge", "statuses": ["COMPLETED"]})
    assert summary.event.count == 0
    assert _purged(gateway) == []


def test_report_ids_are_stable_per_message(handler: ControlHandler, gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "RUNNING")
    body = {"action": "suspend", "instance_id": "order-1"}
    [first] = control(handler, body, message_id="m1")
    [again] = control(handler, body, message_id="m1")
    [other] = control(handler, body, message_id="m2")
    assert first.event_id == again.event_id
    assert first.event_id != other.event_id


# --- a redelivery that took over a stale claim (the first delivery died mid-way) -----------

TAKEN_OVER = Claim(Begin.TAKEN_OVER, "key", previous_claimed_at=0.0)


@pytest.mark.parametrize(
    ("action", "status", "event"),
    [
        ("suspend", "SUSPENDED", EventType.SUSPENDED),
        ("resume", "RUNNING", EventType.RESUMED),
        ("terminate", "TERMINATED", EventType.TERMINATED),
    ],
)
def test_taken_over_change_already_made_is_reported_not_rejected(
    handler: ControlHandler, gateway: FakeGateway, action: str, status: str, event: EventType
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    [outbound] = handler.handle(inbound({"action": action, "instance_id": "order-1"}), TAKEN_OVER)
    assert gateway.mutations() == []  # not made a second time
    assert outbound.event.event is event
    assert outbound.event.status == status


def test_taken_over_purge_of_vanished_instance_is_reported(
    handler: ControlHandler, gateway: FakeGateway
) -> None:
    [outbound] = handler.handle(inbound({"action": "purge", "instance_id": "order-1"}), TAKEN_OVER)
    assert gateway.mutations() == []
    assert outbound.event.event is EventType.PURGED
    assert outbound.event.instance_id == "order-1"


@pytest.mark.parametrize("action", ["suspend", "resume", "terminate"])
def test_taken_over_unknown_instance_is_still_missing(handler: ControlHandler, action: str) -> None:
    with pytest.raises(Missing, match="unknown instance"):
        handler.handle(inbound({"action": action, "instance_id": "ghost"}), TAKEN_OVER)


def test_taken_over_still_rejects_impossible_changes(
    handler: ControlHandler, gateway: FakeGateway
) -> None:
    gateway.states["order-1"] = state("order-1", "COMPLETED")
    with pytest.raises(Rejected, match="cannot suspend") as info:
        handler.handle(inbound({"action": "suspend", "instance_id": "order-1"}), TAKEN_OVER)
    assert info.value.code is RejectCode.STATE_FORBIDS
