"""workflow.approval and the approval workflow, against the real stack."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.conftest import Observer, Worker, unique


def _order(instance_id: str, timeout_seconds: float = 300) -> dict[str, Any]:
    return {
        "workflow": "approval_workflow",
        "instance_id": instance_id,
        "input": {
            "order_id": instance_id,
            "amount": 5000,
            "approval_timeout_seconds": timeout_seconds,
        },
    }


def _output(worker: Worker, instance_id: str) -> dict[str, Any]:
    state = worker.wait_status(instance_id, {"COMPLETED"})
    result: dict[str, Any] = json.loads(state.serialized_output)
    return result


def _wait_waiting(worker: Worker, instance_id: str) -> None:
    """Until the workflow is blocked on the approval event."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = worker.client.get_workflow_state(instance_id)
        if state is not None and "waiting for approval" in (state.serialized_custom_status or ""):
            return
        time.sleep(0.1)
    raise AssertionError(f"{instance_id} never waited for approval")


def test_approved_order_is_processed(worker: Worker, observer: Observer) -> None:
    instance_id = unique("order")
    observer.publish("workflow.start", _order(instance_id))
    _wait_waiting(worker, instance_id)
    message_id = observer.publish(
        "workflow.approval", {"instance_id": instance_id, "data": {"approved": True}}
    )
    raised = observer.wait_for("event_raised", lambda: observer.for_message(message_id))[0]
    assert raised.data["event"] == "event_raised"
    assert raised.data["event_name"] == "approval_decision"
    assert _output(worker, instance_id)["status"] == "approved"


def test_false_decision_rejects_the_order(worker: Worker, observer: Observer) -> None:
    """`false` must arrive as false (the SDK's client would drop it as None)."""
    instance_id = unique("order")
    observer.publish("workflow.start", _order(instance_id))
    _wait_waiting(worker, instance_id)
    observer.publish("workflow.approval", {"instance_id": instance_id, "data": False})
    output = _output(worker, instance_id)
    assert output["status"] == "rejected"
    assert output["decision"] is False


def test_order_times_out_without_decision(worker: Worker, observer: Observer) -> None:
    instance_id = unique("order")
    observer.publish("workflow.start", _order(instance_id, timeout_seconds=2))
    output = _output(worker, instance_id)
    assert output == {"order_id": instance_id, "status": "rejected", "reason": "approval timed out"}


def test_event_published_before_the_workflow_waits_is_delivered(
    worker: Worker, observer: Observer
) -> None:
    """The approval reaches a delayed instance before it has even started running."""
    instance_id = unique("early")
    start = {
        **_order(instance_id),
        "start_at": (datetime.now(UTC) + timedelta(seconds=4)).isoformat(),
    }
    start_id = observer.publish("workflow.start", start)
    scheduled = observer.wait_for("scheduled", lambda: observer.for_message(start_id))[0]
    assert scheduled.data["event"] == "scheduled"
    approval_id = observer.publish("workflow.approval", {"instance_id": instance_id, "data": True})
    raised = observer.wait_for("event_raised", lambda: observer.for_message(approval_id))[0]
    assert raised.data["event"] == "event_raised"
    assert raised.data["status"] == "PENDING", "raised before the workflow ran"
    assert _output(worker, instance_id)["status"] == "approved"


def test_duplicate_approval_raises_the_event_once(worker: Worker, observer: Observer) -> None:
    """The counter of raised events is the workflow's own: two would approve twice."""
    instance_id = unique("order")
    observer.publish("workflow.start", _order(instance_id))
    _wait_waiting(worker, instance_id)
    body = {"instance_id": instance_id, "data": True}
    message_id = observer.publish("workflow.approval", body)
    observer.publish("workflow.approval", body, message_id=message_id)
    events = observer.wait_for("2 reports", lambda: observer.for_message(message_id), count=2)
    assert {e.id for e in events} == {events[0].id}
    _output(worker, instance_id)
    history = [e for e in worker_history(worker, instance_id) if e == "eventRaised"]
    assert len(history) == 1, history


def worker_history(worker: Worker, instance_id: str) -> list[str]:
    """Names of the history events of an instance (GetInstanceHistory)."""
    import grpc
    from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
    from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as stubs

    with grpc.insecure_channel(f"127.0.0.1:{worker.sidecar.grpc_port}") as channel:
        response = stubs.TaskHubSidecarServiceStub(channel).GetInstanceHistory(
            pb.GetInstanceHistoryRequest(instanceId=instance_id), timeout=10
        )
    return [event.WhichOneof("eventType") or "" for event in response.events]
