"""Status events as a separate consumer on the shared broker sees them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Worker,
    private_worker,
    restart_worker,
    unique,
)
from tests.integration.test_approval import worker_history


def _events(
    observer: Observer, instance_id: str, count: int, topic: str = "workflow.status"
) -> list[str]:
    found = observer.wait_for(
        f"{count} events of {instance_id}",
        lambda: observer.for_instance(instance_id, topic),
        count=count,
    )
    time.sleep(0.5)  # settle window: nothing more may arrive (checked just below)
    found = observer.for_instance(instance_id, topic)
    return [e.data["event"] for e in found]


def _control(observer: Observer, action: str, instance_id: str) -> None:
    observer.publish("workflow.control", {"action": action, "instance_id": instance_id})


def _wait_event(observer: Observer, instance_id: str, event: str) -> None:
    observer.wait_for(
        event, lambda: [e for e in observer.for_instance(instance_id) if e.data["event"] == event]
    )


def test_start_to_completion(worker: Worker, observer: Observer) -> None:
    instance_id = unique("seq")
    message_id = observer.publish(
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "seq"},
    )
    assert _events(observer, instance_id, 2) == ["started", "completed"]
    started, completed = observer.for_instance(instance_id)
    assert started.data["correlation_id"] == message_id
    assert "correlation_id" not in completed.data, "the workflow completed by itself"
    assert completed.data["output"] == "hello, seq"
    assert (completed.data["status"], completed.data["previous_status"]) == ("COMPLETED", "RUNNING")
    assert started.subject == completed.subject == instance_id
    assert started.type == "io.github.dapr-workflow-worker.v1.started"
    assert completed.source == "workflow-worker"


def test_suspend_resume_terminate_purge_sequence(worker: Worker, observer: Observer) -> None:
    instance_id = unique("seq-counter")
    observer.publish("workflow.start", {"workflow": "counter_workflow", "instance_id": instance_id})
    _wait_event(observer, instance_id, "started")
    for action, event in (
        ("suspend", "suspended"),
        ("resume", "resumed"),
        ("terminate", "terminated"),
    ):
        _control(observer, action, instance_id)
        _wait_event(observer, instance_id, event)
    worker.wait_status(instance_id, {"TERMINATED"})
    _control(observer, "purge", instance_id)
    assert _events(observer, instance_id, 5) == [
        "started",
        "suspended",
        "resumed",
        "terminated",
        "purged",
    ]


@pytest.mark.parametrize(("decision", "outcome"), [(True, "approved"), (False, "rejected")])
def test_approval_sequence(
    worker: Worker, observer: Observer, decision: bool, outcome: str
) -> None:
    instance_id = unique("seq-order")
    observer.publish(
        "workflow.start",
        {
            "workflow": "approval_workflow",
            "instance_id": instance_id,
            "input": {"order_id": instance_id, "amount": 5000, "approval_timeout_seconds": 300},
        },
    )
    _wait_event(observer, instance_id, "started")
    observer.publish("workflow.approval", {"instance_id": instance_id, "data": decision})
    assert _events(observer, instance_id, 3) == ["started", "event_raised", "completed"]
    assert observer.for_instance(instance_id)[-1].data["output"]["status"] == outcome


def test_workflow_that_raises_is_reported_failed(worker: Worker, observer: Observer) -> None:
    instance_id = unique("seq-fail")
    observer.publish(
        "workflow.start",
        {"workflow": "failing_workflow", "instance_id": instance_id, "input": "disk on fire"},
    )
    assert _events(observer, instance_id, 2) == ["started", "failed"]
    failed = observer.for_instance(instance_id)[-1].data
    assert failed["status"] == "FAILED"
    assert failed["failure"] == {"message": "disk on fire", "type": "RuntimeError"}


def test_activity_failure_is_reported_failed(worker: Worker, observer: Observer) -> None:
    instance_id = unique("seq-task")
    observer.publish(
        "workflow.start",
        {
            "workflow": "task_processing_workflow",
            "instance_id": instance_id,
            "input": {"tasks": ["ok", "fail-me"]},
        },
    )
    assert _events(observer, instance_id, 2) == ["started", "failed"]
    assert "fail-me" in observer.for_instance(instance_id)[-1].data["failure"]["message"]


def test_oversized_output_is_truncated_not_dropped(worker: Worker, observer: Observer) -> None:
    instance_id = unique("seq-big")
    observer.publish(
        "workflow.start",
        {"workflow": "big_output_workflow", "instance_id": instance_id, "input": 400_000},
    )
    assert _events(observer, instance_id, 2) == ["started", "completed"]
    completed = observer.for_instance(instance_id)[-1].data
    assert completed["truncated"] is True
    assert completed["output"].startswith('"xxxx')
    assert len(json.dumps(completed)) <= 240_000, "fits the default status payload limit"


@pytest.fixture
def kill_worker(stack: devstack.Stack, observer: Observer) -> Iterator[Worker]:
    """A worker of its own, to be killed."""
    with private_worker(stack, "kill") as running:
        yield running


def test_completion_is_published_after_a_sigkill(
    stack: devstack.Stack, kill_worker: Worker, observer: Observer
) -> None:
    topic = "kill.workflow.status"
    instance_id = unique("killed")
    observer.publish(
        "kill.workflow.start", {"workflow": "slow_workflow", "instance_id": instance_id, "input": 3}
    )
    observer.wait_for("started", lambda: observer.for_instance(instance_id, topic))
    devstack.wait_until(
        lambda: "taskScheduled" in worker_history(kill_worker, instance_id),
        30,
        "slow activity scheduled",
    )
    kill_worker.proc.kill()  # while the last activity runs, before the workflow completes
    assert not kill_worker.proc.alive()
    restart_worker(stack, kill_worker, "kill-worker-restarted")
    events = observer.wait_for(
        "completed after restart",
        lambda: [
            e for e in observer.for_instance(instance_id, topic) if e.data["event"] == "completed"
        ],
        timeout=120,
    )
    assert events[0].data["output"] == "slow step done"
    assert [e.data["event"] for e in observer.for_instance(instance_id, topic)].count(
        "started"
    ) >= 1
    ids: dict[str, set[str]] = {
        e.data["event"]: set() for e in observer.for_instance(instance_id, topic)
    }
    for e in observer.for_instance(instance_id, topic):
        ids[e.data["event"]].add(e.id)
    assert all(len(v) == 1 for v in ids.values()), f"a repeat must reuse its id: {ids}"
