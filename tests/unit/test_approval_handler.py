"""`workflow.approval`: raise an event into a live instance, with the data as given."""

from __future__ import annotations

from typing import Any, cast

import pytest

from tests.unit.fakes import FakeGateway, inbound, state
from worker.events import EventType
from worker.gateway import WorkflowGateway
from worker.handlers.approval import ApprovalHandler
from worker.idempotency import Begin, Claim
from worker.outcomes import Missing, RejectCode, Rejected

CLAIM = Claim(Begin.NEW, "key")


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def handler(gateway: FakeGateway) -> ApprovalHandler:
    return ApprovalHandler(cast(WorkflowGateway, gateway))


@pytest.mark.parametrize("data", [False, 0, {}, None, {"approved": True, "approver": "ana"}])
@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "SUSPENDED"])
def test_event_is_raised_with_data_as_given(
    handler: ApprovalHandler, gateway: FakeGateway, data: Any, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    [outbound] = handler.handle(
        inbound({"instance_id": "order-1", "data": data}, topic="workflow.approval"), CLAIM
    )
    [call] = gateway.mutations()
    assert call == ("raise_event", "order-1", "approval_decision", data)
    assert type(call[3]) is type(data)
    event = outbound.event
    assert event.event is EventType.EVENT_RAISED
    assert event.event_name == "approval_decision"
    assert event.instance_id == "order-1"
    assert event.status == status
    assert event.workflow == "approval_workflow"
    assert event.correlation_id == "msg-1"


def test_custom_event_name(handler: ApprovalHandler, gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "RUNNING")
    handler.handle(inbound({"instance_id": "order-1", "event_name": "cancel"}), CLAIM)
    assert gateway.mutations() == [("raise_event", "order-1", "cancel", None)]


def test_unknown_instance_is_missing(handler: ApprovalHandler, gateway: FakeGateway) -> None:
    """Not rejected here: the pipeline parks it, as its start may be just behind it."""
    with pytest.raises(Missing) as info:
        handler.handle(inbound({"instance_id": "ghost", "data": True}), CLAIM)
    assert info.value.instance_id == "ghost"
    assert gateway.mutations() == []


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
def test_finished_instance_is_rejected(
    handler: ApprovalHandler, gateway: FakeGateway, status: str
) -> None:
    gateway.states["order-1"] = state("order-1", status)
    with pytest.raises(Rejected) as info:
        handler.handle(inbound({"instance_id": "order-1", "data": True}), CLAIM)
    assert "already finished" in info.value.reason
    assert "'approval_decision' not delivered" in info.value.reason
    assert info.value.status == status
    assert info.value.code is RejectCode.STATE_FORBIDS
    assert gateway.mutations() == []
