"""Every delivery: claim, handle once, record, publish, and answer success, retry or drop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, cast

import grpc
import pytest
from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse

from tests.unit.fakes import (
    FakePublishClient,
    FakeRpcError,
    FakeStateClient,
    StartMadeAnswerLost,
)
from worker.config import Settings
from worker.events import EVENT_TYPE_PREFIX, EventType
from worker.gateway import WorkflowGateway
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline
from worker.handlers.report import report
from worker.handlers.start import StartHandler
from worker.idempotency import Begin, Claim, IdempotencyStore, message_key
from worker.outcomes import RejectCode, Rejected, Transient
from worker.publisher import Outbound, StatusPublisher

TOPIC = "workflow.control"
MAX_ATTEMPTS = 3


@dataclass
class FakeHandler:
    """Returns a `started` report, or raises each queued error in turn first."""

    errors: list[Exception] = field(default_factory=list)
    calls: list[tuple[Inbound, Claim]] = field(default_factory=list)

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        self.calls.append((message, claim))
        if self.errors:
            raise self.errors.pop(0)
        return [
            report(message, EventType.STARTED, "order-1", workflow="wf", status="RUNNING"),
            report(message, EventType.SUSPENDED, "order-2", workflow="wf", status="SUSPENDED"),
        ]


@dataclass
class Harness:
    pipeline: Pipeline
    state: FakeStateClient
    pubsub: FakePublishClient
    store: IdempotencyStore

    def deliver(self, handler: FakeHandler, event: v1.Event, topic: str = TOPIC) -> str:
        response = self.pipeline(topic, handler, event)
        assert isinstance(response, TopicEventResponse)
        return str(response.status.name)

    def published(self) -> list[dict[str, Any]]:
        return self.pubsub.bodies()


def harness_with(**pipeline_options: Any) -> Harness:
    state = FakeStateClient()
    pubsub = FakePublishClient()
    store = IdempotencyStore(state, "statestore", ttl_seconds=3600, lease_seconds=60)
    publisher = StatusPublisher(pubsub, Settings(app_id="worker"))
    pipeline = Pipeline(store, publisher, MAX_ATTEMPTS, **pipeline_options)
    return Harness(pipeline, state, pubsub, store)


@pytest.fixture
def harness() -> Harness:
    return harness_with()


def cloud_event(
    message_id: str = "msg-1",
    data: bytes | str | None = b'{"action": "query", "instance_id": "order-1"}',
    source: str = "tests",
    content_type: str = "application/json",
) -> v1.Event:
    event = v1.Event()  # type: ignore[no-untyped-call]
    event.SetEventID(message_id)
    event.SetSource(source)
    event.SetContentType(content_type)
    if data is not None:
        event.SetData(data)
    return event


def _claim_held(harness: Harness, message_id: str = "msg-1") -> bool:
    key = message_key(TOPIC, "tests", message_id)
    return f"wfw|claim|{key}" in harness.state.items


def test_success_publishes_events_once(harness: Harness) -> None:
    handler = FakeHandler()
    assert harness.deliver(handler, cloud_event()) == "success"

    assert len(handler.calls) == 1
    message, claim = handler.calls[0]
    assert message == Inbound(
        topic=TOPIC,
        message_id="msg-1",
        source="tests",
        content_type="application/json",
        data=b'{"action": "query", "instance_id": "order-1"}',
    )
    assert claim.outcome is Begin.NEW
    bodies = harness.published()
    assert [b["event"] for b in bodies] == ["started", "suspended"]
    assert all(b["correlation_id"] == "msg-1" for b in bodies)
    assert len(set(harness.pubsub.event_ids())) == 2


def test_string_data_reaches_the_handler_as_bytes(harness: Harness) -> None:
    handler = FakeHandler()
    harness.deliver(handler, cloud_event(data='{"a": "é"}'))
    assert handler.calls[0][0].data == '{"a": "é"}'.encode()


def test_redelivery_after_success_republishes_without_handling(harness: Harness) -> None:
    handler = FakeHandler()
    assert harness.deliver(handler, cloud_event()) == "success"
    first_ids = harness.pubsub.event_ids()
    first_types = [c["cloudevent"]["type"] for c in harness.pubsub.calls]

    assert harness.deliver(handler, cloud_event()) == "success"
    assert len(handler.calls) == 1  # not handled a second time
    assert harness.pubsub.event_ids() == first_ids + first_ids
    assert [c["cloudevent"]["type"] for c in harness.pubsub.calls[2:]] == (first_types)


def test_same_message_id_from_another_source_is_a_new_message(harness: Harness) -> None:
    handler = FakeHandler()
    harness.deliver(handler, cloud_event(source="a"))
    harness.deliver(handler, cloud_event(source="b"))
    assert len(handler.calls) == 2
    ids = harness.pubsub.event_ids()
    assert len(set(ids)) == 4


def test_same_message_on_another_topic_is_a_new_message(harness: Harness) -> None:
    handler = FakeHandler()
    harness.deliver(handler, cloud_event(), topic="workflow.control")
    harness.deliver(handler, cloud_event(), topic="workflow.start")
    assert len(handler.calls) == 2


def test_rejected_is_dropped_with_a_rejection_event(harness: Harness) -> None:
    handler = FakeHandler(
        errors=[
            Rejected(
                "cannot suspend order-1: instance is COMPLETED",
                code=RejectCode.STATE_FORBIDS,
                status="COMPLETED",
                instance_id="order-1",
                workflow="wf",
            )
        ]
    )
    assert harness.deliver(handler, cloud_event(message_id="msg-42")) == "drop"

    [call] = harness.pubsub.calls
    assert call["cloudevent"]["type"] == EVENT_TYPE_PREFIX + "rejected"
    assert call["cloudevent"]["subject"] == "order-1"
    body = call["cloudevent"]["data"]
    assert body["event"] == "rejected"
    assert body["correlation_id"] == "msg-42"
    assert body["reason"] == "cannot suspend order-1: instance is COMPLETED"
    assert body["code"] == "state_forbids"
    assert body["status"] == "COMPLETED"
    assert body["instance_id"] == "order-1"
    assert body["workflow"] == "wf"


def test_redelivery_of_rejected_message_republishes_the_rejection(harness: Harness) -> None:
    handler = FakeHandler(errors=[Rejected("no")])
    assert harness.deliver(handler, cloud_event()) == "drop"
    assert harness.deliver(handler, cloud_event()) == "success"
    assert len(handler.calls) == 1
    ids = harness.pubsub.event_ids()
    assert len(ids) == 2
    assert ids[0] == ids[1]


def test_transient_is_retried_without_publishing(harness: Harness) -> None:
    handler = FakeHandler(errors=[Transient("sidecar down")])
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert harness.pubsub.calls == []
    # Released, so the redelivery goes ahead at once; but as a take-over, not NEW: the
    # failed call may have been made.
    raw, _ = harness.state.items[f"wfw|claim|{message_key(TOPIC, 'tests', 'msg-1')}"]
    assert json.loads(raw)["released"] is True

    assert harness.deliver(handler, cloud_event()) == "success"
    assert len(handler.calls) == 2
    assert handler.calls[1][1].outcome is Begin.TAKEN_OVER
    assert [b["event"] for b in harness.published()] == ["started", "suspended"]


def test_unexpected_exception_is_retried_like_transient(harness: Harness) -> None:
    handler = FakeHandler(errors=[KeyError("bug")])
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert harness.pubsub.calls == []
    assert harness.deliver(handler, cloud_event()) == "success"  # at once: claim released
    assert handler.calls[1][1].outcome is Begin.TAKEN_OVER


def test_gives_up_after_max_transient_attempts(harness: Harness) -> None:
    handler = FakeHandler(errors=[Transient(f"down {n}") for n in range(1, 10)])
    statuses = [harness.deliver(handler, cloud_event()) for _ in range(MAX_ATTEMPTS)]
    assert statuses == ["retry"] * (MAX_ATTEMPTS - 1) + ["drop"]
    assert len(handler.calls) == MAX_ATTEMPTS

    [body] = harness.published()
    assert body["event"] == "rejected"
    assert body["correlation_id"] == "msg-1"
    assert f"gave up after {MAX_ATTEMPTS} attempts" in body["reason"]
    assert f"down {MAX_ATTEMPTS}" in body["reason"]  # the last error
    assert body["code"] == "gave_up"

    # A later redelivery is a duplicate: same rejection, no further handling.
    assert harness.deliver(handler, cloud_event()) == "success"
    assert len(handler.calls) == MAX_ATTEMPTS
    ids = harness.pubsub.event_ids()
    assert ids == [ids[0], ids[0]]


def test_attempts_are_counted_per_message(harness: Harness) -> None:
    handler = FakeHandler(errors=[Transient("down")] * (MAX_ATTEMPTS - 1))
    for _ in range(MAX_ATTEMPTS - 1):
        assert harness.deliver(handler, cloud_event(message_id="a")) == "retry"
    # Another message's first failure does not count towards message "a".
    other = FakeHandler(errors=[Transient("down")])
    assert harness.deliver(other, cloud_event(message_id="b")) == "retry"
    assert harness.deliver(handler, cloud_event(message_id="a")) == "success"


def test_draining_retries_without_handling(harness: Harness) -> None:
    handler = FakeHandler()
    harness.pipeline.in_flight.draining = True
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert handler.calls == []
    assert harness.state.saves == []
    assert harness.pubsub.calls == []


def test_busy_message_is_retried_without_handling(harness: Harness) -> None:
    harness.store.begin(message_key(TOPIC, "tests", "msg-1"))  # another delivery holds it
    handler = FakeHandler()
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert handler.calls == []
    assert harness.pubsub.calls == []
    assert _claim_held(harness)  # the other delivery's claim is left alone


def test_state_store_down_is_retried(harness: Harness) -> None:
    harness.state.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "redis down")
    handler = FakeHandler()
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert handler.calls == []


def test_publish_failure_is_retried_and_not_handled_again(harness: Harness) -> None:
    handler = FakeHandler()
    harness.pubsub.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "broker down")
    assert harness.deliver(handler, cloud_event()) == "retry"
    assert len(handler.calls) == 1

    harness.pubsub.error = None
    assert harness.deliver(handler, cloud_event()) == "success"
    assert len(handler.calls) == 1  # the effect happened once
    assert [b["event"] for b in harness.published()] == ["started", "suspended"]


def test_in_flight_is_zero_after_each_delivery(harness: Harness) -> None:
    harness.deliver(FakeHandler(), cloud_event(message_id="a"))
    harness.deliver(FakeHandler(errors=[Transient("x")]), cloud_event(message_id="b"))
    harness.deliver(FakeHandler(errors=[Rejected("x")]), cloud_event(message_id="c"))
    assert harness.pipeline.in_flight.wait_idle(timeout=0)


def test_oversized_message_is_rejected_without_calling_the_handler() -> None:
    state, pubsub = FakeStateClient(), FakePublishClient()
    store = IdempotencyStore(state, "statestore", ttl_seconds=3600, lease_seconds=60)
    publisher = StatusPublisher(pubsub, Settings(app_id="worker"))
    small = Harness(
        Pipeline(store, publisher, MAX_ATTEMPTS, max_message_bytes=2_048), state, pubsub, store
    )
    handler = FakeHandler()
    big = json.dumps({"action": "query", "instance_id": "x", "pad": "y" * 4_000}).encode()
    assert small.deliver(handler, cloud_event(data=big)) == "drop"
    assert handler.calls == []
    (rejected,) = small.published()
    assert rejected["event"] == "rejected"
    assert "limit is 2048" in rejected["reason"]
    assert rejected["code"] == "too_large"


def test_every_outcome_is_audited_as_one_json_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="worker.audit")
    harness.deliver(FakeHandler(), cloud_event(message_id="audit-1", source="ops-console"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "worker.audit"]
    assert [(line["event"], line["instance_id"]) for line in lines] == [
        ("started", "order-1"),
        ("suspended", "order-2"),
    ]
    assert {line["source"] for line in lines} == {"ops-console"}
    assert {line["message_id"] for line in lines} == {"audit-1"}
    assert {line["outcome"] for line in lines} == {"success"}


@pytest.mark.parametrize("instance_id", [None, "order-9"])
def test_a_timed_out_start_then_a_redelivery_never_recreates_the_finished_instance(
    harness: Harness, instance_id: str | None
) -> None:
    """The first delivery's start was made but timed out; the instance ran and finished
    before the redelivery. The redelivery is a take-over (never NEW), looks the instance
    up, recognises it as its own and reports `started` again: no second start, which daprd
    would have turned into a silent recreate of the finished instance."""
    gateway = StartMadeAnswerLost()  # its deadline passed
    handler = StartHandler(cast(WorkflowGateway, gateway), ["approval_workflow"])
    body = {"workflow": "approval_workflow"} | ({"instance_id": instance_id} if instance_id else {})
    event = cloud_event(data=json.dumps(body).encode())
    claims: list[Begin] = []
    handle = handler.handle

    def handle_and_note(message: Inbound, claim: Claim) -> list[Outbound]:
        claims.append(claim.outcome)
        return handle(message, claim)

    handler.handle = handle_and_note  # type: ignore[method-assign]
    assert harness.pipeline("workflow.start", handler, event).status.name == "retry"
    [(_, started_id, *_)] = [c[1:] for c in gateway.calls if c[0] == "start"]
    gateway.states[started_id] = replace(gateway.states[started_id], status="COMPLETED")

    assert harness.pipeline("workflow.start", handler, event).status.name == "success"
    assert claims == [Begin.NEW, Begin.TAKEN_OVER]
    assert [c[0] for c in gateway.calls] == ["get_state", "start", "get_state"]
    [body_out] = harness.published()
    assert (body_out["event"], body_out["instance_id"]) == ("started", started_id)
