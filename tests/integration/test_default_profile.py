"""The embedded default (SQLite state, in-memory pub/sub): no server besides Dapr's own."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from scripts import devstack
from tests.integration.conftest import Worker, publish_plain, start_worker, unique
from worker.idempotency import message_key


@pytest.fixture(scope="module")
def default_worker(stack: devstack.Stack) -> Iterator[Worker]:
    running = start_worker(stack, "default-worker", profile="default")
    yield running
    running.stop()


def test_start_through_the_sidecar_runs_to_completion(default_worker: Worker) -> None:
    instance_id = unique("default")
    publish_plain(
        default_worker.sidecar,
        "workflow.start",
        {
            "workflow": "task_processing_workflow",
            "instance_id": instance_id,
            "input": {"tasks": ["x", "y", "z"]},
        },
    )
    state = default_worker.wait_status(instance_id, {"COMPLETED"})
    assert json.loads(state.serialized_output) == {"processed": 3, "results": ["X", "Y", "Z"]}


def test_dapr_workflow_list_sees_the_worker(default_worker: Worker) -> None:
    """Operators use the CLI against the worker's app-id (it finds sidecars by process)."""
    instance_id = unique("listed")
    publish_plain(
        default_worker.sidecar,
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "cli"},
    )
    default_worker.wait_status(instance_id, {"COMPLETED"})
    result = subprocess.run(
        [
            str(devstack.dapr_bin("dapr")),
            "workflow",
            "list",
            "--app-id",
            "default-worker",
            "--connection-string",
            f"{default_worker.sidecar.proc.log.parent}/default-worker/.dapr-state.db",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert instance_id in result.stdout


def _stored(sidecar: devstack.Sidecar, store: str, key: str) -> bytes | None:
    """The value of ``key`` in the sidecar's state store ``store`` (None: not there)."""
    url = f"http://127.0.0.1:{sidecar.http_port}/v1.0/state/{store}/{urllib.parse.quote(key)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body if response.status == 200 and body else None


def _publish_event(sidecar: devstack.Sidecar, message_id: str, data: dict[str, Any]) -> None:
    """One CloudEvent with a known id and source, as a client that retries sends it."""
    envelope = {
        "specversion": "1.0",
        "id": message_id,
        "source": "default-profile-test",
        "type": "com.example.request",
        "datacontenttype": "application/json",
        "data": data,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{sidecar.http_port}/v1.0/publish/pubsub/workflow.start",
        data=json.dumps(envelope).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204, response.status


def test_idempotency_records_live_in_the_sidecars_memory(default_worker: Worker) -> None:
    """The embedded default keeps claims and done records in its in-memory store
    (WORKER_IDEMPOTENCY_STORE=idempotency), not in SQLite; a message delivered twice still
    starts one instance and is reported under the same event id."""
    assert default_worker.env["WORKER_IDEMPOTENCY_STORE"] == "idempotency"
    instance_id = unique("records")
    message_id = str(uuid.uuid4())
    body = {"workflow": "waiting_workflow", "instance_id": instance_id}
    _publish_event(default_worker.sidecar, message_id, body)
    default_worker.wait_status(instance_id, {"RUNNING"})
    key = message_key("workflow.start", "default-profile-test", message_id)
    done_key = f"wfw|done|{key}"
    devstack.wait_until(
        lambda: _stored(default_worker.sidecar, "idempotency", done_key) is not None,
        30,
        "the done record in the in-memory store",
    )
    record = json.loads(_stored(default_worker.sidecar, "idempotency", done_key) or b"{}")
    assert [e["event"]["event"] for e in record["events"]] == ["started"]
    assert _stored(default_worker.sidecar, "idempotency", f"wfw|claim|{key}") is not None
    for kind in ("claim", "done"):
        assert _stored(default_worker.sidecar, "statestore", f"wfw|{kind}|{key}") is None
    first = default_worker.client.get_workflow_state(instance_id)
    assert first is not None

    _publish_event(default_worker.sidecar, message_id, body)  # delivered again: no effect
    # The in-memory broker hands a topic's messages over one at a time, in order: once a
    # later start has run, the redelivery has been handled.
    marker = unique("marker")
    _publish_event(
        default_worker.sidecar,
        str(uuid.uuid4()),
        {"workflow": "waiting_workflow", "instance_id": marker},
    )
    default_worker.wait_status(marker, {"RUNNING"})
    default_worker.client.terminate_workflow(marker)
    assert json.loads(_stored(default_worker.sidecar, "idempotency", done_key) or b"{}") == record
    again = default_worker.client.get_workflow_state(instance_id)
    assert again is not None
    assert again.created_at == first.created_at
    assert again.runtime_status.name == "RUNNING"
    default_worker.client.terminate_workflow(instance_id)
