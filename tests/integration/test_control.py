"""workflow.control against the real stack: every action, every state rejection, bulk purge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker, private_worker, unique


def _start_counter(worker: Worker, observer: Observer, topic_prefix: str = "") -> str:
    instance_id = unique("counter")
    message_id = observer.publish(
        f"{topic_prefix}workflow.start",
        {
            "workflow": "counter_workflow",
            "instance_id": instance_id,
            "input": {"counter": 0, "interval_seconds": 0.2},
        },
    )
    observer.wait_for(
        "started", lambda: observer.for_message(message_id, f"{topic_prefix}workflow.status")
    )
    worker.wait_status(instance_id, {"RUNNING"})
    return instance_id


def _control(observer: Observer, body: dict[str, object], topic_prefix: str = "") -> dict[str, Any]:
    message_id = observer.publish(f"{topic_prefix}workflow.control", body)
    events = observer.wait_for(
        f"answer to {body}",
        lambda: observer.for_message(message_id, f"{topic_prefix}workflow.status"),
    )
    return events[-1].data


def _bulk_purge(observer: Observer, body: dict[str, object], topic_prefix: str) -> int:
    """Publish a bulk purge; the number of instances its summary event reports."""
    message_id = observer.publish(f"{topic_prefix}workflow.control", {"action": "purge", **body})
    summary = observer.wait_for(
        f"summary of {body}",
        lambda: [
            e
            for e in observer.for_message(message_id, f"{topic_prefix}workflow.status")
            if "count" in e.data
        ],
    )
    return int(summary[0].data["count"])


def _counter(worker: Worker, instance_id: str) -> int:
    state = worker.client.get_workflow_state(instance_id)
    assert state is not None
    return int((state.serialized_custom_status or "0").strip('"'))


def test_suspend_resume_terminate_purge_query(worker: Worker, observer: Observer) -> None:
    instance_id = _start_counter(worker, observer)

    suspended = _control(
        observer, {"action": "suspend", "instance_id": instance_id, "reason": "maintenance"}
    )
    assert (suspended["event"], suspended["status"], suspended["previous_status"]) == (
        "suspended",
        "SUSPENDED",
        "RUNNING",
    )
    assert suspended["reason"] == "maintenance"
    worker.wait_status(instance_id, {"SUSPENDED"})
    frozen = _counter(worker, instance_id)
    time.sleep(1)  # a suspended counter must not count (observation window, not a sync wait)
    assert _counter(worker, instance_id) == frozen

    resumed = _control(observer, {"action": "resume", "instance_id": instance_id})
    assert (resumed["event"], resumed["status"]) == ("resumed", "RUNNING")
    worker.wait_status(instance_id, {"RUNNING"})

    query = _control(observer, {"action": "query", "instance_id": instance_id})
    assert query["event"] == "state"
    assert query["workflow"] == "counter_workflow"
    assert query["status"] == "RUNNING"

    terminated = _control(
        observer,
        {
            "action": "terminate",
            "instance_id": instance_id,
            "reason": "done",
            "output": {"stopped": True},
        },
    )
    assert (terminated["event"], terminated["status"]) == ("terminated", "TERMINATED")
    state = worker.wait_status(instance_id, {"TERMINATED"})
    assert state.serialized_output == '{"stopped": true}'

    purged = _control(observer, {"action": "purge", "instance_id": instance_id})
    assert (purged["event"], purged["previous_status"]) == ("purged", "TERMINATED")
    assert worker.client.get_workflow_state(instance_id) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"action": "resume"}, "cannot resume"),
        ({"action": "purge"}, "cannot purge"),
        ({"action": "query", "instance_id": "does-not-exist-1"}, "unknown instance"),
    ],
)
def test_state_forbids_the_action(
    worker: Worker, observer: Observer, body: dict[str, object], reason: str
) -> None:
    instance_id = _start_counter(worker, observer)
    body = {"instance_id": instance_id, **body}
    rejected = _control(observer, body)
    assert rejected["event"] == "rejected"
    assert reason in rejected["reason"]
    assert rejected["instance_id"] == body["instance_id"]  # consumers of that instance see it
    _control(observer, {"action": "terminate", "instance_id": instance_id})


def test_suspend_of_a_finished_instance_is_rejected(worker: Worker, observer: Observer) -> None:
    instance_id = unique("greet")
    observer.publish(
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "x"},
    )
    worker.wait_status(instance_id, {"COMPLETED"})
    rejected = _control(observer, {"action": "suspend", "instance_id": instance_id})
    assert rejected["event"] == "rejected"
    assert rejected["status"] == "COMPLETED"
    assert "cannot suspend" in rejected["reason"]


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("workflow.start", {"workflow": "not_registered"}, "not allowed"),
        (
            "workflow.start",
            {"workflow": "greeting_workflow", "instanceId": "x"},
            "Extra inputs are not permitted",
        ),
        ("workflow.start", {"workflow": "greeting_workflow", "start_at": "tomorrow"}, "start_at"),
        ("workflow.control", {"action": "explode", "instance_id": "x"}, "action"),
        ("workflow.control", {"action": "suspend"}, "instance_id: Field required"),
        (
            "workflow.control",
            {"action": "purge", "instance_id": "x", "older_than": "1h"},
            "either instance_id or the bulk filters",
        ),
        ("workflow.approval", {"event_name": "approval_decision"}, "instance_id"),
    ],
)
def test_invalid_messages_are_rejected_and_dead_lettered(
    worker: Worker, observer: Observer, topic: str, body: dict[str, object], reason: str
) -> None:
    message_id = observer.publish(topic, body)
    rejected = observer.wait_for("rejection", lambda: observer.for_message(message_id))[0]
    assert rejected.data["event"] == "rejected"
    assert reason in rejected.data["reason"]
    assert rejected.type.endswith(".rejected")
    observer.wait_for(
        "dead letter",
        lambda: [e for e in observer.events("workflow.deadletter") if e.id == message_id],
    )


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "application/json", "not UTF-8"),
        (b"[1, 2]", "application/json", "must be a JSON object"),
        (b"<xml/>", "application/xml", "unsupported content type"),
    ],
)
def test_malformed_payloads_are_rejected(
    worker: Worker, observer: Observer, raw: bytes, content_type: str, reason: str
) -> None:
    message_id = observer.publish("workflow.start", None, raw=raw, content_type=content_type)
    rejected = observer.wait_for("rejection", lambda: observer.for_message(message_id))[0]
    assert reason in rejected.data["reason"]


@pytest.fixture(scope="module")
def purge_worker(stack: devstack.Stack, observer: Observer) -> Iterator[Worker]:
    """A worker of its own (own app-id and topics), so bulk purges see only this test's work."""
    with private_worker(stack, "purge") as running:
        yield running


def test_bulk_purge_by_status_and_by_age(purge_worker: Worker, observer: Observer) -> None:
    p = "purge."
    old_done = unique("old-done")
    observer.publish(
        f"{p}workflow.start", {"workflow": "greeting_workflow", "instance_id": old_done, "input": 1}
    )
    purge_worker.wait_status(old_done, {"COMPLETED"})
    old_failed = unique("old-failed")
    observer.publish(
        f"{p}workflow.start", {"workflow": "failing_workflow", "instance_id": old_failed}
    )
    purge_worker.wait_status(old_failed, {"FAILED"})
    time.sleep(2.5)  # age difference between the two batches (what older_than measures)
    new_done = unique("new-done")
    observer.publish(
        f"{p}workflow.start", {"workflow": "greeting_workflow", "instance_id": new_done, "input": 2}
    )
    purge_worker.wait_status(new_done, {"COMPLETED"})
    running = _start_counter(purge_worker, observer, p)

    assert _bulk_purge(observer, {"statuses": ["FAILED"]}, p) == 1
    assert purge_worker.client.get_workflow_state(old_failed) is None
    assert purge_worker.client.get_workflow_state(old_done) is not None

    assert _bulk_purge(observer, {"older_than": "2s"}, p) == 1
    assert purge_worker.client.get_workflow_state(old_done) is None
    assert purge_worker.client.get_workflow_state(new_done) is not None

    assert _bulk_purge(observer, {}, p) == 1, "every finished instance, never a running one"
    assert purge_worker.client.get_workflow_state(new_done) is None
    assert purge_worker.client.get_workflow_state(running) is not None
    _control(observer, {"action": "terminate", "instance_id": running}, p)
