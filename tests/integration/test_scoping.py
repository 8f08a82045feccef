"""Pub/sub scoping in the shared profile: only granted app-ids may publish control messages,
only the worker may publish status events, and only granted app-ids may read them."""

from __future__ import annotations

import json
import threading
import time

import pytest
from cloudevents.sdk.event import v1
from dapr.ext.grpc import App

from scripts import devstack
from tests.integration.conftest import Observer, Worker, unique


def _publish(http_port: int, topic: str) -> int:
    body = json.dumps({"workflow": "counter_workflow"}).encode()
    return devstack.publish(http_port, topic, body, "application/json")


@pytest.mark.parametrize("topic", ["workflow.start", "workflow.approval", "workflow.control"])
def test_an_app_outside_the_scope_cannot_publish_control_messages(
    stack: devstack.Stack, worker: Worker, observer: Observer, topic: str
) -> None:
    intruder = stack.start_sidecar(
        f"intruder-{topic.split('.')[1]}",
        stack.components("redis"),
        app_port=devstack.free_port(),
    )
    try:
        assert _publish(intruder.http_port, topic) == 403
        assert _publish(intruder.http_port, "some.other.topic") == 204, "other topics stay open"
        assert _publish(observer.http_port, topic) == 204, "a granted app-id may"
    finally:
        intruder.proc.stop()


def test_only_the_worker_publishes_status_events_and_only_granted_apps_read_them(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    """workflow.status is protected: an app outside the grant can neither forge a status event
    nor read one; the granted consumer (the observer, app-id workflow-client) reads the
    worker's events, and cannot publish on the topic either."""
    heard: list[str] = []
    app = App()
    app.register_health_check(lambda: None)

    def on_status(event: v1.Event) -> None:
        data = event.Data()
        heard.append(data.decode(errors="replace") if isinstance(data, bytes) else str(data))

    app.subscribe("pubsub", "workflow.status")(on_status)
    app_port = devstack.free_port()
    threading.Thread(target=app.run, args=(app_port,), daemon=True).start()
    devstack.wait_until(lambda: devstack.port_open(app_port), 10, "the intruder's app")
    intruder = stack.start_sidecar(
        "intruder-status", stack.components("redis"), app_port=app_port, wait_for_app=True
    )
    try:
        assert _publish(intruder.http_port, "workflow.status") == 403, "an intruder forged one"
        assert _publish(observer.http_port, "workflow.status") == 403, "a consumer forged one"
        instance_id = unique("scoped")
        message_id = observer.publish(
            "workflow.start",
            {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "scoped"},
        )
        started = observer.wait_for(
            "the worker's started event, at the granted consumer",
            lambda: [e for e in observer.for_message(message_id) if e.data["event"] == "started"],
        )
        assert started[0].source == "workflow-worker"
        time.sleep(3)  # the intruder's sidecar reads the same stream as the observer's
        assert not [text for text in heard if instance_id in text], "an intruder read it"
    finally:
        intruder.proc.stop()
        app.stop()
