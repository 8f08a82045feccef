"""Status events leave as CloudEvents on the status topic, filtered and size-limited."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from tests.unit.fakes import FakePublishClient, FakeRpcError
from worker.config import Settings
from worker.events import EVENT_TYPE_PREFIX, EventType, FailureInfo, RejectCode, StatusEvent
from worker.outcomes import Transient
from worker.publisher import Outbound, StatusPublisher

_WHEN = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _event(
    event: EventType = EventType.STARTED,
    instance_id: str | None = "order-1",
    workflow: str | None = "approval_workflow",
    **fields: Any,
) -> StatusEvent:
    return StatusEvent(
        event=event, instance_id=instance_id, workflow=workflow, occurred_at=_WHEN, **fields
    )


def _publisher(**settings: Any) -> tuple[StatusPublisher, FakePublishClient]:
    client = FakePublishClient()
    return StatusPublisher(client, Settings(**settings)), client


def test_publishes_cloudevent_metadata_and_json() -> None:
    publisher, client = _publisher(app_id="my-worker", pubsub_name="bus", status_topic="wf.status")
    publisher.publish(Outbound("evt-1", _event(status="RUNNING", correlation_id="msg-9")))

    assert len(client.calls) == 1
    call = client.calls[0]
    assert call["pubsub_name"] == "bus"
    assert call["topic_name"] == "wf.status"
    assert call["data_content_type"] == "application/cloudevents+json"
    envelope = call["cloudevent"]
    assert {k: v for k, v in envelope.items() if k != "data"} == {
        "specversion": "1.0",
        "id": "evt-1",
        "type": EVENT_TYPE_PREFIX + "started",
        "source": "my-worker",
        "subject": "order-1",
        "partitionkey": "order-1",
        "datacontenttype": "application/json",
        "time": _WHEN.isoformat(),
    }
    assert call["publish_metadata"] == {"partitionKey": "order-1"}
    body = call["cloudevent"]["data"]
    assert body["event"] == "started"
    assert body["instance_id"] == "order-1"
    assert body["workflow"] == "approval_workflow"
    assert body["status"] == "RUNNING"
    assert body["correlation_id"] == "msg-9"
    assert body["truncated"] is False
    assert datetime.fromisoformat(body["occurred_at"]) == _WHEN
    assert "reason" not in body  # None fields are left out


def test_event_without_instance_has_no_subject_or_partition_key() -> None:
    publisher, client = _publisher(app_id="w")
    publisher.publish(Outbound("evt-2", _event(EventType.PURGED, instance_id=None, count=3)))
    envelope = client.calls[0]["cloudevent"]
    assert "subject" not in envelope
    assert "partitionkey" not in envelope
    assert "partitionKey" not in client.calls[0]["publish_metadata"]
    assert envelope["type"] == EVENT_TYPE_PREFIX + "purged"
    assert client.calls[0]["cloudevent"]["data"]["count"] == 3


def test_all_events_published_by_default() -> None:
    publisher, client = _publisher(app_id="w")
    publisher.publish_all(Outbound(f"id-{e.value}", _event(e)) for e in EventType)
    assert [c["cloudevent"]["type"] for c in client.calls] == [
        EVENT_TYPE_PREFIX + e.value for e in EventType
    ]


def test_global_status_events_filter() -> None:
    publisher, client = _publisher(
        app_id="w", status_events=[EventType.COMPLETED, EventType.REJECTED]
    )
    publisher.publish_all(Outbound(f"id-{e.value}", _event(e)) for e in EventType)
    assert client.event_ids() == ["id-completed", "id-rejected"]


def test_per_workflow_filter_overrides_global() -> None:
    publisher, client = _publisher(
        app_id="w",
        status_events=[EventType.STARTED],
        status_events_per_workflow={"quiet": [EventType.FAILED]},
    )
    publisher.publish(Outbound("a", _event(EventType.STARTED, workflow="quiet")))
    publisher.publish(Outbound("b", _event(EventType.FAILED, workflow="quiet")))
    publisher.publish(Outbound("c", _event(EventType.STARTED, workflow="other")))
    publisher.publish(Outbound("d", _event(EventType.FAILED, workflow="other")))
    publisher.publish(Outbound("e", _event(EventType.STARTED, workflow=None)))
    assert client.event_ids() == ["b", "c", "e"]


def test_per_workflow_filter_without_global_filter() -> None:
    publisher, _ = _publisher(
        app_id="w", status_events_per_workflow={"quiet": [EventType.COMPLETED]}
    )
    assert publisher.wanted(_event(EventType.COMPLETED, workflow="quiet"))
    assert not publisher.wanted(_event(EventType.STARTED, workflow="quiet"))
    assert publisher.wanted(_event(EventType.STARTED, workflow="loud"))


def test_large_payload_is_truncated_below_the_limit() -> None:
    limit = 4_096
    publisher, client = _publisher(app_id="w", max_status_payload_bytes=limit)
    big = {f"key{i}": f"value-{i}" for i in range(5_000)}
    publisher.publish(Outbound("big", _event(EventType.COMPLETED, output=big)))

    data = client.calls[0]["data"]
    assert isinstance(data, bytes)
    assert len(data) <= limit
    body = json.loads(data)["data"]
    assert body["truncated"] is True
    assert body["event"] == "completed"
    assert body["instance_id"] == "order-1"
    assert isinstance(body["output"], str)  # a preview of the JSON text
    assert body["output"].startswith('{"key0": "value-0"')
    assert len(body["output"]) < len(json.dumps(big))


def _bulky_failure() -> StatusEvent:
    return _event(
        EventType.FAILED,
        input="i" * 50_000,
        output=["o" * 50_000],
        custom_status={"c": "c" * 50_000},
        failure=FailureInfo(message="m" * 50_000, type="ValueError", stack_trace="s" * 50_000),
        reason="r" * 50_000,
    )


def test_truncation_cuts_every_bulky_field() -> None:
    publisher, client = _publisher(app_id="w", max_status_payload_bytes=4_096)
    publisher.publish(Outbound("big", _bulky_failure()))
    data = client.calls[0]["data"]
    assert len(data) < 10_000
    body = json.loads(data)["data"]
    assert body["truncated"] is True
    assert body["failure"]["type"] == "ValueError"
    assert "stack_trace" not in body["failure"]
    assert 0 < len(body["failure"]["message"]) < 50_000
    assert 0 < len(body["reason"]) < 50_000
    for field in ("input", "output", "custom_status"):
        assert 0 < len(body[field]) < 50_000


def test_truncated_event_with_many_bulky_fields_fits_the_smallest_limit() -> None:
    limit = 4_096
    publisher, client = _publisher(app_id="w", max_status_payload_bytes=limit)
    publisher.publish(Outbound("big", _bulky_failure()))
    assert len(client.calls[0]["data"]) <= limit


def test_payload_below_the_limit_is_left_alone() -> None:
    publisher, client = _publisher(app_id="w", max_status_payload_bytes=240_000)
    output = {"items": list(range(1_000))}
    publisher.publish(Outbound("ok", _event(EventType.COMPLETED, output=output)))
    body = client.calls[0]["cloudevent"]["data"]
    assert body["truncated"] is False
    assert body["output"] == output


def test_rpc_error_becomes_transient() -> None:
    publisher, client = _publisher(app_id="w")
    client.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "sidecar down")
    with pytest.raises(Transient) as info:
        publisher.publish(Outbound("x", _event(EventType.COMPLETED)))
    assert "completed" in str(info.value)
    assert "order-1" in str(info.value)
    assert info.value.__cause__ is client.error


def test_a_publish_the_scopes_forbid_is_retried_and_logged_as_a_configuration_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher, client = _publisher(app_id="bench")
    client.error = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "topic not allowed")
    with caplog.at_level(logging.ERROR, logger="worker.publisher"), pytest.raises(Transient):
        publisher.publish(Outbound("x", _event(EventType.COMPLETED)))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'bench'" in errors[0] and "publishingScopes" in errors[0]

    client.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "sidecar down")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="worker.publisher"), pytest.raises(Transient):
        publisher.publish(Outbound("y", _event(EventType.COMPLETED)))
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == []


def test_filtered_event_does_not_call_client() -> None:
    publisher, client = _publisher(app_id="w", status_events=[EventType.COMPLETED])
    client.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "sidecar down")
    publisher.publish(Outbound("x", _event(EventType.STARTED)))  # no error: never sent
    assert client.calls == []


def test_outbound_record_round_trips() -> None:
    original = Outbound(
        "evt-7",
        _event(
            EventType.FAILED,
            failure=FailureInfo(message="boom", type="RuntimeError"),
            output={"a": [1, False, None]},
            count=None,
        ),
    )
    record = json.loads(json.dumps(original.to_record()))
    restored = Outbound.from_record(record)
    assert restored == original


def test_echo_prints_one_compact_line_per_published_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher, _ = _publisher(app_id="w", echo_status=True)
    with caplog.at_level(logging.INFO, logger="worker.status"):
        publisher.publish(Outbound("e1", _event(status="RUNNING")))
        publisher.publish(
            Outbound(
                "e2",
                _event(
                    EventType.REJECTED,
                    reason="unknown instance order-1",
                    code=RejectCode.UNKNOWN_INSTANCE,
                ),
            )
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.status"]
    assert lines == [
        "status 10:00:00.000 started order-1 RUNNING workflow=approval_workflow",
        "status 10:00:00.000 rejected order-1 workflow=approval_workflow "
        "code=unknown_instance reason='unknown instance order-1'",
    ]


def test_no_echo_by_default_and_none_for_a_failed_publish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet, _ = _publisher(app_id="w")
    loud, client = _publisher(app_id="w", echo_status=True)
    client.error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    with caplog.at_level(logging.INFO, logger="worker.status"):
        quiet.publish(Outbound("e1", _event()))
        with pytest.raises(Transient):
            loud.publish(Outbound("e2", _event()))
    assert [r for r in caplog.records if r.name == "worker.status"] == []


def test_the_cloudevent_is_what_the_cloudevents_package_writes() -> None:
    """Written directly for speed; read back by the reference implementation it is the same
    event (attributes, extensions, data), non-ASCII and all."""
    from cloudevents.http import from_json

    publisher, _ = _publisher(app_id="my-worker")
    outbound = Outbound(
        "evt-1",
        _event(status="RUNNING", correlation_id="msg-9", output={"name": "Zoë", "n": [1, 2.5]}),
    )
    raw = publisher.cloudevent(outbound)
    parsed = from_json(raw)
    assert parsed["specversion"] == "1.0"
    assert parsed["id"] == "evt-1"
    assert parsed["source"] == "my-worker"
    assert parsed["partitionkey"] == "order-1"
    assert parsed.data == json.loads(raw)["data"]
    assert parsed.data["output"] == {"name": "Zoë", "n": [1, 2.5]}
    assert raw.isascii()  # non-ASCII escaped, as before


class _SlowFirstPublish(FakePublishClient):
    """The first single publish waits for ``release``: events published meanwhile queue."""

    def __init__(self) -> None:
        super().__init__()
        self.first_started = threading.Event()
        self.release = threading.Event()

    def publish_event(self, *args: Any, **kwargs: Any) -> None:
        if not self.first_started.is_set():
            self.first_started.set()
            assert self.release.wait(5)
        super().publish_event(*args, **kwargs)


def _publish_while_one_is_on_its_way(
    client: _SlowFirstPublish, publisher: StatusPublisher, more: int
) -> list[BaseException | None]:
    """Publish ``more`` + 1 events, all but the first while the first one waits."""
    with ThreadPoolExecutor(more + 1) as pool:
        first = pool.submit(publisher.publish, Outbound("evt-0", _event(instance_id="i-0")))
        assert client.first_started.wait(5)
        rest = [
            pool.submit(publisher.publish, Outbound(f"evt-{i}", _event(instance_id=f"i-{i}")))
            for i in range(1, more + 1)
        ]
        while len(publisher._together._queue) < more:  # type: ignore[union-attr]
            threading.Event().wait(0.01)
        client.release.set()
        return [f.exception(5) for f in [first, *rest]]


def test_in_bulk_events_published_at_once_go_out_in_one_call_each_whole() -> None:
    client = _SlowFirstPublish()
    publisher = StatusPublisher(client, Settings(app_id="w"), bulk=True)
    assert _publish_while_one_is_on_its_way(client, publisher, 9) == [None] * 10
    assert client.bulk_calls == 1  # the nine that queued behind the first
    assert sorted(call["cloudevent"]["id"] for call in client.calls) == [
        f"evt-{i}" for i in range(10)
    ]
    assert all(call["cloudevent"]["source"] == "w" for call in client.calls)


def test_in_bulk_a_failed_entry_fails_its_whole_batch_and_the_next_go_out() -> None:
    client = _SlowFirstPublish()
    client.fail_in_bulk = {2}
    publisher = StatusPublisher(client, Settings(app_id="w"), bulk=True)
    outcomes = _publish_while_one_is_on_its_way(client, publisher, 4)
    assert outcomes[0] is None  # the first went out alone
    assert all(isinstance(error, Transient) for error in outcomes[1:])  # retried, same ids
    client.fail_in_bulk = set()
    publisher.publish(Outbound("evt-1", _event(instance_id="i-1")))
    assert client.calls[-1]["cloudevent"]["id"] == "evt-1"


def test_not_in_bulk_every_event_is_its_own_publish_with_its_partition_key() -> None:
    client = _SlowFirstPublish()
    publisher = StatusPublisher(client, Settings(app_id="w"))
    client.release.set()
    with ThreadPoolExecutor(5) as pool:
        list(
            pool.map(
                lambda i: publisher.publish(Outbound(f"evt-{i}", _event(instance_id=f"i-{i}"))),
                range(5),
            )
        )
    assert client.bulk_calls == 0
    assert sorted(c["publish_metadata"]["partitionKey"] for c in client.calls) == [
        f"i-{i}" for i in range(5)
    ]
