"""workflow.start against the real stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.conftest import Observer, Worker, unique


def test_start_runs_a_workflow_to_completion(worker: Worker, observer: Observer) -> None:
    instance_id = unique("tasks")
    message_id = observer.publish(
        "workflow.start",
        {
            "workflow": "task_processing_workflow",
            "instance_id": instance_id,
            "input": {"tasks": ["a", "b"]},
        },
    )
    state = worker.wait_status(instance_id, {"COMPLETED"})
    assert '"processed": 2' in state.serialized_output
    started = observer.wait_for("started", lambda: observer.for_message(message_id))
    assert started[0].data["event"] == "started"
    assert started[0].data["instance_id"] == instance_id


def test_duplicate_start_without_instance_id_starts_one_instance(
    worker: Worker, observer: Observer
) -> None:
    body = {"workflow": "greeting_workflow", "input": "dup"}
    message_id = observer.publish("workflow.start", body)
    observer.publish("workflow.start", body, message_id=message_id)
    wait_for_log(worker, f"duplicate message {message_id}")
    events = observer.wait_for(
        "started and completed",
        lambda: observer.for_instance(_instance(observer, message_id)),
        count=2,
    )
    changes = observer.by_instance("workflow.status")[events[0].data["instance_id"]]
    assert {kind: len(ids) for kind, ids in changes.items()} == {"started": 1, "completed": 1}, (
        "one start, however often delivered (a redelivery republishes under the same id)"
    )
    instance_id = events[0].data["instance_id"]
    assert instance_id.startswith("greeting_workflow-")
    state = worker.wait_status(instance_id, {"COMPLETED"})
    assert state.serialized_output == '"hello, dup"'


def _instance(observer: Observer, message_id: str) -> str:
    started = observer.wait_for("started", lambda: observer.for_message(message_id))
    return str(started[0].data["instance_id"])


def wait_for_log(worker: Worker, text: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in worker.proc.log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the worker's log after {timeout}s")


def test_start_of_a_finished_instance_is_rejected_unless_replace(
    worker: Worker, observer: Observer
) -> None:
    instance_id = unique("greet")
    first = observer.publish(
        "workflow.start", {"workflow": "greeting_workflow", "instance_id": instance_id, "input": 1}
    )
    observer.wait_for("started", lambda: observer.for_message(first))
    worker.wait_status(instance_id, {"COMPLETED"})
    again = observer.publish(
        "workflow.start", {"workflow": "greeting_workflow", "instance_id": instance_id, "input": 2}
    )
    rejected = observer.wait_for("rejection", lambda: observer.for_message(again))[0]
    assert rejected.data["event"] == "rejected"
    assert "already finished" in rejected.data["reason"]
    kept = worker.client.get_workflow_state(instance_id)
    assert kept is not None
    assert kept.serialized_output == '"hello, 1"'

    replace = observer.publish(
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": 3, "replace": True},
    )
    restarted = observer.wait_for("restart", lambda: observer.for_message(replace))[0]
    assert restarted.data["event"] == "started"
    completions = observer.wait_for(
        "second completion",
        lambda: [e for e in observer.for_instance(instance_id) if e.data["event"] == "completed"],
        count=2,
    )
    assert sorted(e.data["output"] for e in completions) == ["hello, 1", "hello, 3"]


def test_delayed_start(worker: Worker, observer: Observer) -> None:
    instance_id = unique("later")
    start_at = datetime.now(UTC) + timedelta(seconds=3)
    message_id = observer.publish(
        "workflow.start",
        {
            "workflow": "greeting_workflow",
            "instance_id": instance_id,
            "input": "later",
            "start_at": start_at.isoformat(),
        },
    )
    scheduled = observer.wait_for("scheduled", lambda: observer.for_message(message_id))[0]
    assert scheduled.data["event"] == "scheduled"
    state = worker.wait_status(instance_id, {"COMPLETED"})
    assert state.created_at is not None
