"""The `history` control action: the gateway call, the handler, and a timeline cut to fit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb

from tests.unit.fakes import FakeGateway, FakePublishClient, FakeRpcError, inbound, state
from tests.unit.test_timeline import _approved_order
from worker.config import Settings
from worker.events import EventType, StatusEvent, TimelineEntry
from worker.gateway import WorkflowGateway
from worker.handlers.control import ControlHandler
from worker.idempotency import Begin, Claim
from worker.outcomes import Missing, Rejected, Transient
from worker.publisher import Outbound, StatusPublisher

CLAIM = Claim(Begin.NEW, "key")
CREATED = datetime(2026, 11, 22, 9, 59)  # naive UTC, as the SDK returns it


# --- handler ---------------------------------------------------------------------------------


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def _history(gateway: FakeGateway, instance_id: str = "order-1") -> list[Outbound]:
    handler = ControlHandler(cast(WorkflowGateway, gateway))
    body = {"action": "history", "instance_id": instance_id}
    return handler.handle(inbound(body, message_id="msg-7"), CLAIM)


def test_history_publishes_the_timeline(gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "COMPLETED", created_at=CREATED)
    gateway.histories["order-1"] = _approved_order()
    [outbound] = _history(gateway)
    event = outbound.event
    assert event.event is EventType.HISTORY
    assert event.instance_id == "order-1"
    assert (event.workflow, event.status) == ("approval_workflow", "COMPLETED")
    assert event.created_at == CREATED.replace(tzinfo=UTC)
    assert event.last_updated_at == CREATED.replace(tzinfo=UTC)
    assert event.correlation_id == "msg-7"
    assert event.input == {"order_id": "order-1", "amount": 5000}, "the user's, unwrapped"
    assert event.timeline is not None
    assert [(e.kind, e.name, e.outcome) for e in event.timeline][2:] == [
        ("event_raised", "approval_decision", None),
        ("activity", "process_order", "completed"),
        ("report", "worker_report_status", "completed"),
    ]
    assert gateway.calls == [("get_state", "order-1", False), ("history", "order-1")]
    assert gateway.mutations() == []


def test_history_event_id_is_stable_per_message(gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "RUNNING")
    gateway.histories["order-1"] = []
    [first] = _history(gateway)
    [again] = _history(gateway)
    assert first.event_id == again.event_id
    assert first.event.timeline == []


def test_history_of_unknown_instance_is_missing(gateway: FakeGateway) -> None:
    """Parked by the pipeline for the grace period, like every unknown-instance message."""
    with pytest.raises(Missing) as info:
        _history(gateway, "ghost")
    assert info.value.instance_id == "ghost"
    assert gateway.calls == [("get_state", "ghost", False)]


def test_history_of_instance_purged_meanwhile_is_missing(gateway: FakeGateway) -> None:
    gateway.states["order-1"] = state("order-1", "COMPLETED")  # no history: purged meanwhile
    with pytest.raises(Missing):
        _history(gateway)


@pytest.mark.parametrize(
    "body",
    [
        {"action": "history"},
        {"action": "history", "instance_id": "bad id"},
        {"action": "history", "instance_id": "order-1", "limit": 5},
    ],
)
def test_invalid_history_message_is_rejected(gateway: FakeGateway, body: dict[str, Any]) -> None:
    handler = ControlHandler(cast(WorkflowGateway, gateway))
    with pytest.raises(Rejected, match="invalid message"):
        handler.handle(inbound(body), CLAIM)
    assert gateway.calls == []


# --- gateway ---------------------------------------------------------------------------------


class _Stub:
    """GetInstanceHistory of the generated stub: answers or fails as told."""

    def __init__(self, answer: pb.GetInstanceHistoryResponse | grpc.RpcError) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def GetInstanceHistory(
        self, request: pb.GetInstanceHistoryRequest, timeout: float, metadata: Any
    ) -> pb.GetInstanceHistoryResponse:
        self.calls.append((request.instanceId, timeout, metadata))
        if isinstance(self.answer, grpc.RpcError):
            raise self.answer
        return self.answer


def _gateway(stub: _Stub) -> WorkflowGateway:
    gateway = object.__new__(WorkflowGateway)  # no sidecar: only what history() uses
    gateway._stub = stub  # type: ignore[assignment]
    gateway._timeout = 3.0
    gateway._metadata = (("dapr-api-token", "t"),)
    return gateway


def test_gateway_history_returns_the_events_with_deadline_and_metadata() -> None:
    events = _approved_order()
    stub = _Stub(pb.GetInstanceHistoryResponse(events=events))
    assert _gateway(stub).history("order-1") == events
    assert stub.calls == [("order-1", 3.0, (("dapr-api-token", "t"),))]


def test_gateway_history_not_found_is_missing() -> None:
    error = FakeRpcError(grpc.StatusCode.NOT_FOUND, "workflow instance 'ghost' not found")
    with pytest.raises(Missing) as info:
        _gateway(_Stub(error)).history("ghost")
    assert info.value.instance_id == "ghost"


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (grpc.StatusCode.UNAVAILABLE, Transient),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Transient),
        (grpc.StatusCode.INVALID_ARGUMENT, Rejected),
    ],
)
def test_gateway_history_other_errors_are_classified(
    code: grpc.StatusCode, outcome: type[Exception]
) -> None:
    with pytest.raises(outcome, match="history of order-1"):
        _gateway(_Stub(FakeRpcError(code, "boom"))).history("order-1")


# --- truncation ------------------------------------------------------------------------------

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _entry(i: int, result: Any = None) -> TimelineEntry:
    at = T0 + timedelta(seconds=i)
    return TimelineEntry(
        kind="activity",
        name=f"step_{i}",
        started_at=at,
        ended_at=at,
        duration_ms=0.0,
        outcome="completed",
        result=result,
    )


def _published(timeline: list[TimelineEntry], limit: int, **fields: Any) -> tuple[bytes, Any]:
    client = FakePublishClient()
    publisher = StatusPublisher(client, Settings(app_id="w", max_status_payload_bytes=limit))
    run = TimelineEntry(kind="run", name="big_workflow", started_at=T0, outcome="pending")
    event = StatusEvent(
        event=EventType.HISTORY,
        instance_id="order-1",
        occurred_at=T0,
        timeline=[run, *timeline],
        **fields,
    )
    publisher.publish(Outbound("h", event))
    data = client.calls[0]["data"]
    return data, json.loads(data)["data"]


@pytest.mark.parametrize("limit", [4_096, 240_000])
def test_huge_timeline_keeps_the_run_and_the_newest_entries_under_the_limit(limit: int) -> None:
    entries = [_entry(i, {"items": list(range(50))}) for i in range(5_000)]
    data, body = _published(entries, limit, input={"big": "x" * 10_000})
    assert len(data) <= limit
    assert body["truncated"] is True
    kept = body["timeline"]
    assert kept[0]["kind"] == "run"
    assert 1 < len(kept) < 5_001
    names = [e["name"] for e in kept[1:]]
    assert names == [f"step_{i}" for i in range(5_000 - len(names), 5_000)], "the newest"
    assert f"{5_001 - len(kept)} of 5001 entries left out" in body["reason"]
    assert isinstance(body["input"], str), "cut by the same rule as other payloads"


def test_long_results_are_cut_to_a_preview_before_entries_are_dropped() -> None:
    entries = [_entry(i, {"blob": "b" * 100_000}) for i in range(3)]
    data, body = _published(entries, 240_000)
    assert len(data) <= 240_000
    assert body["truncated"] is True
    assert len(body["timeline"]) == 4, "every entry fits once its result is cut"
    assert "reason" not in body
    cut = body["timeline"][1]["result"]
    assert isinstance(cut, str) and cut.startswith('{"blob": "bbb')
    assert len(cut) < 100_000


def test_small_results_stay_json_when_the_timeline_is_cut() -> None:
    entries = [_entry(i, {"ok": i}) for i in range(5_000)]
    _, body = _published(entries, 4_096)
    assert body["timeline"][-1]["result"] == {"ok": 4_999}


def test_timeline_below_the_limit_is_left_alone() -> None:
    entries = [_entry(i, {"ok": i}) for i in range(10)]
    _, body = _published(entries, 240_000)
    assert body["truncated"] is False
    assert len(body["timeline"]) == 11
    assert "reason" not in body
