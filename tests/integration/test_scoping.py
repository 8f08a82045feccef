"""Pub/sub scoping in the shared profile: only granted app-ids may publish control messages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker


def _publish(http_port: int, topic: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1.0/publish/pubsub/{topic}",
        data=json.dumps({"workflow": "counter_workflow"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


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
