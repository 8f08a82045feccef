"""The `history` control action against the real stack: a finished approval's timeline."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from tests.integration.conftest import Observer, Worker, unique
from tests.integration.test_approval import _order, _wait_waiting


def _history(observer: Observer, instance_id: str) -> tuple[str, dict[str, Any]]:
    message_id = observer.publish(
        "workflow.control", {"action": "history", "instance_id": instance_id}
    )
    [answer] = observer.wait_for(
        f"history of {instance_id}", lambda: observer.for_message(message_id)
    )
    return message_id, answer.data


def test_history_of_a_finished_approval(worker: Worker, observer: Observer) -> None:
    instance_id = unique("order")
    order = _order(instance_id)
    observer.publish("workflow.start", order)
    _wait_waiting(worker, instance_id)
    decision = {"approved": True, "approver": "ana"}
    observer.publish("workflow.approval", {"instance_id": instance_id, "data": decision})
    worker.wait_status(instance_id, {"COMPLETED"})

    message_id, event = _history(observer, instance_id)
    print("history event:", json.dumps(event, indent=2))  # the README's example comes from here
    assert event["event"] == "history"
    assert event["correlation_id"] == message_id
    assert (event["instance_id"], event["workflow"]) == (instance_id, "approval_workflow")
    assert event["status"] == "COMPLETED"
    assert "created_at" in event and "last_updated_at" in event
    assert event["input"] == order["input"], "the user's input, not the worker's envelope"
    timeline = event["timeline"]
    times = [datetime.fromisoformat(e["started_at"]) for e in timeline]
    assert times == sorted(times), "oldest first"

    run = timeline[0]
    assert (run["kind"], run["name"], run["outcome"]) == ("run", "approval_workflow", "completed")
    assert run["result"]["status"] == "approved"
    assert run["duration_ms"] > 0

    [raised] = [e for e in timeline if e["kind"] == "event_raised"]
    assert (raised["name"], raised["result"]) == ("approval_decision", decision)

    activities = [e for e in timeline if e["kind"] == "activity"]
    assert [(a["name"], a["outcome"]) for a in activities] == [("process_order", "completed")]
    assert activities[0]["result"] == {"order_id": instance_id, "charged": 5000}
    assert activities[0]["duration_ms"] >= 0
    assert datetime.fromisoformat(activities[0]["started_at"]) >= datetime.fromisoformat(
        raised["started_at"]
    ), "processed after the approval"

    # The approval timeout lost the race: the run ended without it firing.
    [timer] = [e for e in timeline if e["kind"] == "timer"]
    assert timer["outcome"] == "abandoned"
    # The worker's own completion report, kept apart from the user's activities.
    reports = [e for e in timeline if e["kind"] == "report"]
    assert [(r["name"], r["outcome"]) for r in reports] == [("worker_report_status", "completed")]
    assert {e["kind"] for e in timeline} == {"run", "timer", "event_raised", "activity", "report"}


def test_history_of_an_unknown_instance_is_rejected_after_the_grace_period(
    worker: Worker, observer: Observer
) -> None:
    grace = float(worker.env["WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS"])
    instance_id = unique("never")
    published = time.monotonic()
    message_id, rejected = _history(observer, instance_id)
    assert time.monotonic() - published >= grace
    assert rejected["event"] == "rejected"
    assert rejected["instance_id"] == instance_id
    assert rejected["reason"].startswith(f"unknown instance {instance_id}")
    observer.wait_for(
        "dead letter",
        lambda: [e for e in observer.events("workflow.deadletter") if e.id == message_id],
    )
