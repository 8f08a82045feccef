"""Spans and W3C trace context through the core, recorded by OpenTelemetry's SDK in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
from cloudevents.sdk.event import v1
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.unit.fakes import FakePublishClient, FakeStateClient
from worker import traces
from worker.config import Settings
from worker.events import EventType
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline
from worker.handlers.report import report
from worker.hosting import report_activity
from worker.idempotency import Claim, IdempotencyStore
from worker.origin import Origin, unwrap
from worker.parking import ParkingLot
from worker.publisher import Outbound, StatusPublisher

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

_exporter = InMemorySpanExporter()


def _install_sdk() -> None:
    """One SDK for the test process (the global provider can be set once); every span its
    tracers make lands in ``_exporter``."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        provider._test_exporter = True  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _install_sdk()
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _parent_id(span: ReadableSpan) -> str | None:
    return _hex(span.parent.span_id, 16) if span.parent is not None else None


class StartedHandler:
    """Reports one instance started, and remembers the trace context it ran in."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        self.seen = traces.carrier()
        return [report(message, EventType.STARTED, "order-1", workflow="wf", status="RUNNING")]


def _pipeline(pubsub: FakePublishClient) -> Pipeline:
    store = IdempotencyStore(FakeStateClient(), "statestore", ttl_seconds=60, lease_seconds=60)
    return Pipeline(store, StatusPublisher(pubsub, Settings(app_id="worker")), 3)


def _event(extensions: dict[str, Any]) -> v1.Event:
    event = v1.Event()  # type: ignore[no-untyped-call]
    event.SetEventID("msg-1")
    event.SetSource("tests")
    event.SetContentType("application/json")
    event.SetData(b"{}")
    event.SetExtensions(extensions)
    return event


def test_handling_continues_the_cloudevents_trace_and_status_events_carry_it(
    spans: InMemorySpanExporter,
) -> None:
    pubsub = FakePublishClient()
    handler = StartedHandler()
    response = _pipeline(pubsub)(
        "workflow.start", handler, _event({"traceparent": TRACEPARENT, "tracestate": "k=v"})
    )
    assert response.status.name == "success"

    [process] = _named(spans, "process workflow.start")
    assert process.kind is SpanKind.CONSUMER
    assert _hex(process.context.trace_id, 32) == TRACE_ID
    assert _parent_id(process) == PARENT_ID
    attributes = dict(process.attributes or {})
    assert attributes["messaging.destination.name"] == "workflow.start"
    assert attributes["messaging.message.id"] == "msg-1"
    assert attributes["messaging.system"] == "dapr"
    assert attributes[traces.INSTANCE_ID] == "order-1"
    assert attributes["worker.outcome"] == "success"
    # the handler ran in it: what it hands on (the start's envelope) names the handling span
    assert handler.seen["traceparent"] == f"00-{TRACE_ID}-{_hex(process.context.span_id, 16)}-01"
    assert handler.seen["tracestate"] == "k=v"

    [publish] = _named(spans, "publish workflow.status")
    assert publish.kind is SpanKind.PRODUCER
    assert _parent_id(publish) == _hex(process.context.span_id, 16)
    assert str(dict(publish.attributes or {})["cloudevents.event_type"]).endswith(".started")
    [call] = pubsub.calls
    cloudevent = call["cloudevent"]
    assert cloudevent["traceparent"] == f"00-{TRACE_ID}-{_hex(publish.context.span_id, 16)}-01"
    assert cloudevent["traceid"] == cloudevent["traceparent"]  # the sidecar keeps ours
    assert cloudevent["tracestate"] == "k=v"


def test_a_message_without_trace_context_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    pubsub = FakePublishClient()
    outer = trace.get_tracer("test").start_span("unrelated")
    token = otel_context.attach(trace.set_span_in_context(outer))
    try:
        _pipeline(pubsub)("workflow.start", StartedHandler(), _event({}))
    finally:
        otel_context.detach(token)
        outer.end()
    [process] = _named(spans, "process workflow.start")
    assert process.parent is None, "a root, not a child of whatever ran around it"
    assert pubsub.calls[0]["cloudevent"]["traceparent"].split("-")[1] == _hex(
        process.context.trace_id, 32
    )


def test_the_delivering_sidecars_metadata_is_the_fallback() -> None:
    pubsub = FakePublishClient()
    handler = StartedHandler()
    _pipeline(pubsub)("workflow.start", handler, _event({"_metadata_traceparent": TRACEPARENT}))
    assert handler.seen["traceparent"].split("-")[1] == TRACE_ID


def test_outside_a_trace_nothing_is_added() -> None:
    publisher = StatusPublisher(FakePublishClient(), Settings(app_id="worker"))
    message = Inbound("workflow.start", "m", "s", "application/json", b"{}")
    outbound = report(message, EventType.STARTED, "order-1", workflow="wf", status="RUNNING")
    assert traces.carrier() == {}
    assert b"traceparent" not in publisher.cloudevent(outbound)


@pytest.mark.parametrize("value", ["", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_an_invalid_traceparent_is_no_trace(value: str) -> None:
    assert traces.context_from(value) is None


class RecordingStub:
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.metadata: list[Any] = []

    def StartInstance(self, request: Any, timeout: float, metadata: Any) -> Any:
        self.requests.append(request)
        self.metadata.append(metadata)
        return None


def test_the_start_carries_its_span_as_parent_trace_context(spans: InMemorySpanExporter) -> None:
    gateway = WorkflowGateway(5, address="127.0.0.1:1")
    stub = RecordingStub()
    gateway._stub = cast(Any, stub)
    origin = Origin("tests", "m-1", instance_id="wf-1")
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    try:
        with traces.processing("workflow.start", "m-1", TRACEPARENT):
            gateway.start("wf", "wf-1", origin.wrap({"n": 1, "é": [True, None]}), at)
        gateway.start("wf", "wf-2", None, None)  # outside a trace
    finally:
        gateway.close()
    traced, plain = stub.requests
    [start] = _named(spans, "workflow start")
    assert start.kind is SpanKind.CLIENT
    assert dict(start.attributes or {})["workflow.operation"] == "start"
    assert traced.parentTraceContext.traceParent == (
        f"00-{TRACE_ID}-{_hex(start.context.span_id, 16)}-01"
    )
    # everything else as the SDK's schedule_new_workflow sends it
    assert (traced.name, traced.instanceId, traced.version.value) == ("wf", "wf-1", "")
    assert unwrap(json.loads(traced.input.value))[1] == {"n": 1, "é": [True, None]}
    assert traced.scheduledStartTimestamp.ToDatetime(tzinfo=UTC) == at
    assert not plain.HasField("parentTraceContext")
    assert not plain.HasField("input") and not plain.HasField("scheduledStartTimestamp")


def test_the_grpc_interceptor_puts_traceparent_in_the_metadata(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[Any] = []

    class Outcome:
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

    def continuation(details: Any, request: Any) -> Outcome:
        seen.append(dict(details.metadata or ()))
        return Outcome()

    class Details:
        method = "/dapr.proto.runtime.v1.Dapr/SaveState"
        timeout = 1.0
        metadata = (("dapr-api-token", "t"), ("traceparent", "stale"))
        credentials = None
        wait_for_ready = None
        compression = None

    interceptor = traces.Propagation(spans=True)
    interceptor.intercept_unary_unary(continuation, Details(), None)  # outside a trace
    with traces.processing("workflow.start", "m-1", TRACEPARENT):
        interceptor.intercept_unary_unary(continuation, Details(), None)
    outside, inside = seen
    assert outside == {"dapr-api-token": "t", "traceparent": "stale"}, "left as it was"
    [call] = _named(spans, "dapr.proto.runtime.v1.Dapr/SaveState")
    assert call.kind is SpanKind.CLIENT
    assert call.status.status_code.name == "ERROR"
    assert inside == {
        "dapr-api-token": "t",
        "traceparent": f"00-{TRACE_ID}-{_hex(call.context.span_id, 16)}-01",
    }


def test_the_envelope_carries_the_trace_and_old_envelopes_stay_valid() -> None:
    origin = Origin("s", "m", instance_id="i", trace={"traceparent": TRACEPARENT})
    again, data = unwrap(origin.wrap({"x": 1}))
    assert again is not None and again.trace == {"traceparent": TRACEPARENT}
    assert data == {"x": 1}
    assert again.next_generation().trace == origin.trace
    old = {"__dapr_workflow_worker__": {"source": "s", "message_id": "m"}, "input": 2}
    before, data = unwrap(old)
    assert before == Origin("s", "m") and before.trace == {} and data == 2
    odd = {"__dapr_workflow_worker__": {"source": "s", "message_id": "m", "trace": "x"}}
    assert unwrap(odd)[0] == Origin("s", "m")
    assert "trace" not in Origin("s", "m").wrap(None)["__dapr_workflow_worker__"]


def test_a_report_publishes_in_the_start_messages_trace(spans: InMemorySpanExporter) -> None:
    """The `completed` the workflow reports later joins the trace of the message that started
    it: the trace context rides in the report's record (from the instance's envelope)."""
    client = FakePublishClient()
    activity = report_activity(StatusPublisher(client, Settings(app_id="w")))
    message = Inbound("workflow.start", "m", "s", "application/json", b"{}")
    record = report(message, EventType.COMPLETED, "order-1", workflow="wf").to_record()
    record["trace"] = {"traceparent": TRACEPARENT}
    activity(cast(Any, None), record)
    [publish] = _named(spans, "publish workflow.status")
    assert _hex(publish.context.trace_id, 32) == TRACE_ID
    assert _parent_id(publish) == PARENT_ID
    assert client.calls[0]["cloudevent"]["traceparent"].split("-")[2] == _hex(
        publish.context.span_id, 16
    )
    # and without one (an instance the worker did not start), no trace at all
    del record["trace"]
    activity(cast(Any, None), record)
    assert "traceparent" not in client.calls[1]["cloudevent"]


def test_a_parked_message_keeps_its_trace_for_its_retries() -> None:
    lot = ParkingLot(FakeStateClient(), "statestore", ttl_seconds=3600)
    message = Inbound(
        "workflow.control", "m", "s", "application/json", b"{}", traceparent=TRACEPARENT
    )
    lot.park("k", message, 1.0)
    assert lot.load("k") == replace(message, first_seen=1.0, tracestate="")
    lot.park("plain", replace(message, traceparent=""), 1.0)
    loaded = lot.load("plain")
    assert loaded is not None and loaded.traceparent == ""
