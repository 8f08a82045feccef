"""my_flows through the worker's line, without a sidecar (dapr_workflow_worker.testing)."""

from __future__ import annotations

from dapr_workflow_worker.testing import WorkerHarness


def test_an_order_gets_its_invoice() -> None:
    worker = WorkerHarness("my_flows")
    events = worker.publish(
        "start",
        {"workflow": "invoice_workflow", "input": {"order_id": "o-1", "amount": 100}},
        message_id="m-1",
    )
    assert [e["event"] for e in events] == ["started", "completed"]
    instance_id = worker.instance_id("invoice_workflow", "m-1")
    assert {e["instance_id"] for e in events} == {instance_id}
    assert events[0]["correlation_id"] == "m-1"
    assert events[1]["output"] == {"order_id": "o-1", "amount": 100.0, "total": 120.0}


def test_an_order_without_an_amount_is_rejected_before_anything_runs() -> None:
    worker = WorkerHarness("my_flows")
    body = {"workflow": "invoice_workflow", "instance_id": "o-2", "input": {"order_id": "o-2"}}
    [rejected] = worker.publish("start", body)
    assert (rejected["event"], rejected["code"]) == ("rejected", "invalid_message")
    assert "amount: Field required" in rejected["reason"]
    assert worker.state("o-2") is None


def test_a_redelivered_start_is_answered_again_and_starts_nothing_new() -> None:
    worker = WorkerHarness("my_flows")
    body = {"workflow": "invoice_workflow", "input": {"order_id": "o-3", "amount": 1}}
    first = worker.publish("start", body, message_id="m-3")
    again = worker.publish("start", body, message_id="m-3")
    assert [e["event"] for e in first] == ["started", "completed"]
    assert [e["event"] for e in again] == ["started"]  # the same answer, under the same id
    assert worker.cloudevents[-1]["id"] == worker.cloudevents[0]["id"]
