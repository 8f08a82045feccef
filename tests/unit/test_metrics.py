"""Prometheus metrics: what the core reports through its instruments, and the endpoint.

Every test has a registry of its own (never prometheus_client's global one).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import pytest
from cloudevents.sdk.event import v1
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.fakes import FakePublishClient, FakeRpcError, FakeStateClient
from worker.config import Settings
from worker.events import EventType, StatusEvent, now
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound, parse
from worker.handlers.pipeline import Pipeline
from worker.handlers.report import report
from worker.idempotency import Claim, IdempotencyStore
from worker.instruments import MeasuredClient, call_result
from worker.messages import RaiseEvent
from worker.outcomes import Missing, RejectCode, Rejected, Transient
from worker.parking import ParkingLot
from worker.publisher import Outbound, StatusPublisher
from worker.telemetry.metrics import Metrics, PrometheusInstruments, new_registry

TOPIC = "workflow.approval"
T = "messaging_destination_name"


@dataclass
class Handler:
    """Parses an approval, then raises each queued error in turn, then reports."""

    errors: list[Exception] = field(default_factory=list)

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        request: RaiseEvent = parse(message, RaiseEvent)
        if self.errors:
            raise self.errors.pop(0)
        return [report(message, EventType.EVENT_RAISED, request.instance_id, status="RUNNING")]


@dataclass
class Line:
    pipeline: Pipeline
    registry: CollectorRegistry
    pubsub: FakePublishClient
    state: FakeStateClient

    def deliver(self, message_id: str, data: bytes, handler: Handler) -> str:
        event = v1.Event()  # type: ignore[no-untyped-call]
        event.SetEventID(message_id)
        event.SetSource("tests")
        event.SetContentType("application/json")
        event.SetData(data)
        return str(self.pipeline(TOPIC, handler, event).status.name)

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


def _line(max_attempts: int = 3, grace: float = 0.0, max_bytes: int = 1_000_000) -> Line:
    registry = CollectorRegistry()
    instruments = PrometheusInstruments(registry)
    state = FakeStateClient()
    pubsub = FakePublishClient()
    client = MeasuredClient(state, instruments)
    store = IdempotencyStore(client, "statestore", ttl_seconds=3600, lease_seconds=60)
    publisher = StatusPublisher(
        MeasuredClient(pubsub, instruments), Settings(app_id="w"), instruments
    )
    parking = ParkingLot(client, "statestore", 3600) if grace else None
    pipeline = Pipeline(
        store,
        publisher,
        max_attempts,
        max_bytes,
        parking=parking,
        grace_seconds=grace,
        instruments=instruments,
    )
    return Line(pipeline, registry, pubsub, state)


APPROVE = b'{"instance_id": "order-1"}'


def test_outcomes_per_topic_with_bounded_reasons() -> None:
    line = _line()
    handler = Handler()
    assert line.deliver("m1", APPROVE, handler) == "success"
    assert line.deliver("m1", APPROVE, handler) == "success"  # a redelivery: duplicate
    assert line.deliver("m2", b"not json", handler) == "drop"
    assert line.deliver("m3", b'{"event_name": "x"}', handler) == "drop"  # no instance_id

    messages = "workflow_worker_messages_total"
    assert line.value(messages, **{T: TOPIC, "outcome": "success", "reason": ""}) == 1
    assert line.value(messages, **{T: TOPIC, "outcome": "duplicate", "reason": ""}) == 1
    assert line.value(messages, **{T: TOPIC, "outcome": "drop", "reason": "invalid_message"}) == 2
    consumed = {
        T: TOPIC,
        "messaging_system": "dapr",
        "messaging_operation_name": "process",
    }
    assert line.value("messaging_client_consumed_messages_total", **consumed) == 4
    assert line.value("messaging_process_duration_seconds_count", **consumed, error_type="") == 2
    dropped = {**consumed, "error_type": "invalid_message"}
    assert line.value("messaging_process_duration_seconds_count", **dropped) == 2
    assert line.value("messaging_process_duration_seconds_sum", **dropped) > 0
    # event_raised once (the duplicate republished it), rejected twice
    events = "workflow_worker_status_events_total"
    assert line.value(events, event_type="event_raised", result="published") == 2
    assert line.value(events, event_type="rejected", result="published") == 2
    assert line.value("workflow_worker_messages_in_flight", **{T: TOPIC}) == 0
    # every publish and state call timed: 4 events out, 4 claims tried (1 refused: ABORTED)
    calls = "workflow_worker_sidecar_call_duration_seconds_count"
    assert line.value(calls, operation="publish", result="ok") == 4
    assert line.value(calls, operation="state_save", result="aborted") == 1
    assert line.value(calls, operation="state_save", result="ok") == 3 + 3  # claims + records


def test_transient_attempts_then_gave_up() -> None:
    line = _line(max_attempts=2)
    handler = Handler(errors=[Transient("sidecar down"), RuntimeError("bug")])
    assert line.deliver("m1", APPROVE, handler) == "retry"
    assert line.deliver("m1", APPROVE, handler) == "drop"

    assert line.value("workflow_worker_transient_attempts_total", **{T: TOPIC}, kind="transient")
    assert line.value("workflow_worker_transient_attempts_total", **{T: TOPIC}, kind="unexpected")
    messages = "workflow_worker_messages_total"
    assert line.value(messages, **{T: TOPIC, "outcome": "retry", "reason": "transient"}) == 1
    assert line.value(messages, **{T: TOPIC, "outcome": "drop", "reason": "gave_up"}) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (Rejected("finished", code=RejectCode.STATE_FORBIDS), "state_forbids"),
        (Rejected("no code given"), "other"),
        (Missing("order-1"), "unknown_instance"),
    ],
)
def test_a_rejection_is_counted_under_its_code(error: Exception, reason: str) -> None:
    line = _line()
    assert line.deliver("m1", APPROVE, Handler(errors=[error])) == "drop"
    labels = {T: TOPIC, "outcome": "drop", "reason": reason}
    assert line.value("workflow_worker_messages_total", **labels) == 1


def test_too_large_is_its_own_reason() -> None:
    line = _line(max_bytes=1_024)
    assert line.deliver("m1", b'{"instance_id": "' + b"x" * 2_000 + b'"}', Handler()) == "drop"
    labels = {T: TOPIC, "outcome": "drop", "reason": "too_large"}
    assert line.value("workflow_worker_messages_total", **labels) == 1


def test_a_parked_message_counts_once_parked_then_once_settled() -> None:
    line = _line(grace=60.0)
    handler = Handler(errors=[Missing("order-1"), Missing("order-1")])
    assert line.deliver("m1", APPROVE, handler) == "success"  # parked, delivery acknowledged
    parked = Inbound(TOPIC, "m1", "tests", "application/json", APPROVE, first_seen=time.time())
    assert line.pipeline.handle(handler, parked).status.name == "retry"  # still waiting
    assert line.pipeline.handle(handler, parked).status.name == "success"  # its instance came

    messages = "workflow_worker_messages_total"
    assert line.value(messages, **{T: TOPIC, "outcome": "parked", "reason": ""}) == 1
    assert line.value(messages, **{T: TOPIC, "outcome": "success", "reason": ""}) == 1
    assert line.value(messages, **{T: TOPIC, "outcome": "retry", "reason": ""}) == 0
    assert line.value(messages, **{T: TOPIC, "outcome": "retry", "reason": "transient"}) == 0


def test_messages_that_come_too_early_or_too_late_are_retries_with_a_reason() -> None:
    line = _line()
    line.pipeline.in_flight.draining = True
    assert line.deliver("m1", APPROVE, Handler()) == "retry"
    labels = {T: TOPIC, "outcome": "retry", "reason": "draining"}
    assert line.value("workflow_worker_messages_total", **labels) == 1


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (None, "ok"),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"), "unavailable"),
        (FakeRpcError(grpc.StatusCode.UNKNOWN, "no such instance"), "unknown"),
        (TimeoutError(), "timeout"),
        (Missing("x"), "not_found"),
        (ValueError("bug"), "error"),
    ],
)
def test_gateway_times_every_call_by_operation_and_result(
    error: Exception | None, result: str
) -> None:
    registry = CollectorRegistry()
    gateway = object.__new__(WorkflowGateway)  # no sidecar: only _call is used
    gateway._instruments = PrometheusInstruments(registry)

    def call() -> str:
        if error is not None:
            raise error
        return "done"

    if error is None:
        assert gateway._call("start", "start it", call) == "done"
    else:
        with pytest.raises(Exception):  # noqa: B017 (classified: Rejected/Transient/as is)
            gateway._call("start", "start it", call)
    labels = {"operation": "start", "result": result}
    name = "workflow_worker_sidecar_call_duration_seconds_count"
    assert registry.get_sample_value(name, labels) == 1
    assert call_result(error) == result


def test_status_events_published_failed_and_skipped_per_type() -> None:
    registry = CollectorRegistry()
    instruments = PrometheusInstruments(registry)
    pubsub = FakePublishClient()
    settings = Settings(app_id="w", status_events=[EventType.STARTED, EventType.REJECTED])
    publisher = StatusPublisher(pubsub, settings, instruments)

    def event(kind: EventType) -> Outbound:
        return Outbound(kind.value, StatusEvent(event=kind, instance_id="i", occurred_at=now()))

    publisher.publish(event(EventType.STARTED))
    publisher.publish(event(EventType.SUSPENDED))  # not wanted by the settings
    pubsub.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(Transient):
        publisher.publish(event(EventType.REJECTED))

    def count(kind: str, result: str) -> float | None:
        labels = {"event_type": kind, "result": result}
        return registry.get_sample_value("workflow_worker_status_events_total", labels)

    assert count("started", "published") == 1
    assert count("suspended", "skipped") == 1
    assert count("rejected", "failed") == 1
    assert count("rejected", "published") is None


def test_instances_per_status_and_stalled_come_from_the_watch_only_while_it_sweeps() -> None:
    known: list[tuple[dict[str, int], int] | None] = [None]
    registry = new_registry(lambda: known[0])
    assert registry.get_sample_value("workflow_worker_instances", {"status": "RUNNING"}) is None
    assert registry.get_sample_value("workflow_worker_instances_stalled") is None

    known[0] = ({"RUNNING": 3, "COMPLETED": 5}, 1)
    assert registry.get_sample_value("workflow_worker_instances", {"status": "RUNNING"}) == 3
    assert registry.get_sample_value("workflow_worker_instances", {"status": "COMPLETED"}) == 5
    assert registry.get_sample_value("workflow_worker_instances_stalled") == 1


def test_the_endpoint_serves_the_registry_in_prometheus_text_format() -> None:
    metrics = Metrics("127.0.0.1", 0)
    metrics.start()
    try:
        metrics.instruments.message_received(TOPIC)
        assert metrics.url.startswith("http://127.0.0.1:") and metrics.url.endswith("/metrics")
        with urllib.request.urlopen(metrics.url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        metrics.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    consumed = families["messaging_client_consumed_messages"]
    assert [s.value for s in consumed.samples if s.name.endswith("_total")] == [1.0]
    assert "process_resident_memory_bytes" in families  # the process collector
