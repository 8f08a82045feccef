"""The postgres-kafka profile on the real stack: PostgreSQL (state.postgresql v2) as the actor
state store and the worker's records store, Kafka (pubsub.kafka, KRaft, 4 partitions a topic)
for every topic.

This module brings up a stack of its own (placement, scheduler, PostgreSQL, Kafka) and puts
its ``stack``, ``observer`` and ``worker`` in place of the session's Redis ones, so the
autouse contract checks (schema, per-instance order) and the logs on failure apply here too.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Worker,
    on_backend,
    start_worker,
    unique,
)
from worker.idempotency import _PREFIX, message_key

BACKEND = "postgres-kafka"


stack, observer = on_backend(BACKEND)


@pytest.fixture(scope="module")
def worker(stack: devstack.Stack, observer: Observer) -> Iterator[Worker]:
    # An approval published with its start may come first: parked, not rejected, however
    # long the first join of Kafka's consumer group keeps the start back.
    running = start_worker(
        stack,
        "workflow-worker",
        profile=BACKEND,
        env={"WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS": "120"},
    )
    yield running
    running.stop()


def _sql(stack: devstack.Stack, query: str) -> str:
    """One value from the profile's PostgreSQL (database dapr, the components' one)."""
    port = str(stack.postgres_port)
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", port, "-U", "dapr", "-d", "dapr", "-tAc", query],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _rows(stack: devstack.Stack, pattern: str) -> int:
    """Rows of the state store's table whose key is LIKE ``pattern``."""
    return int(_sql(stack, f"SELECT count(*) FROM state WHERE key LIKE '{pattern}'"))


def _done_records(stack: devstack.Stack, topic: str, message_id: str) -> int:
    key = message_key(topic, "integration-tests", message_id)
    return _rows(stack, f"%||{_PREFIX}|done|{key}")


def _partitions_holding(stack: devstack.Stack, topic: str, text: str) -> set[int]:
    """The partitions of ``topic`` whose log holds ``text`` (Kafka writes records as they
    come, uncompressed here: an instance id is in the key and in the CloudEvent)."""
    found = set()
    folders = sorted((stack.workdir / "kafka-data").glob(f"{topic}-*"))
    assert len(folders) == 4, f"{topic} should have 4 partitions: {folders}"
    for folder in folders:
        if any(text.encode() in log.read_bytes() for log in folder.glob("*.log")):
            found.add(int(folder.name.rsplit("-", 1)[1]))
    return found


def _wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout}s")


def test_start_and_approval_complete_through_kafka_with_records_in_postgres(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    instance_id = unique("order")
    started_by = observer.publish(
        "workflow.start",
        {
            "workflow": "approval_workflow",
            "instance_id": instance_id,
            "input": {"order_id": instance_id, "amount": 5000},
        },
    )
    # Published at once, before the instance exists: the worker parks it until it does.
    approved_by = observer.publish(
        "workflow.approval",
        {"instance_id": instance_id, "data": {"approved": True, "approver": "ana"}},
    )
    events = observer.wait_for(
        "completed",
        lambda: [e for e in observer.for_instance(instance_id) if e.data["event"] == "completed"],
        timeout=120,
    )
    assert events[0].data["output"]["status"] == "approved"
    kinds = [e.data["event"] for e in observer.for_instance(instance_id)]
    assert {"started", "event_raised", "completed"} <= set(kinds), kinds
    assert observer.for_message(started_by)[0].data["event"] == "started"
    assert observer.for_message(approved_by)[0].data["event"] == "event_raised"

    # The workflow's state and the worker's records are rows of PostgreSQL's state table.
    assert _rows(stack, f"%||{instance_id}||%") > 0, "no workflow state in PostgreSQL"
    _wait_until(
        "both messages' done records in PostgreSQL",
        lambda: (
            _done_records(stack, "workflow.start", started_by) == 1
            and _done_records(stack, "workflow.approval", approved_by) == 1
        ),
    )
    # The status topic is keyed by instance: all of this instance's events in one partition.
    assert len(_partitions_holding(stack, "workflow.status", instance_id)) == 1


def test_a_redelivered_start_starts_one_instance(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    """The same CloudEvent (same source and id) published twice, as a publisher retrying or
    Kafka redelivering after a lost commit would: one instance, one `started`, one `completed`;
    the second delivery is recognised as a duplicate and its events are republished under
    the ids they had."""
    body = {"workflow": "greeting_workflow", "input": "twice"}
    message_id = observer.publish("workflow.start", body)
    observer.publish("workflow.start", body, message_id=message_id)
    _wait_until(
        "the second delivery recognised",
        lambda: f"duplicate message {message_id}" in worker.proc.log.read_text(errors="replace"),
        timeout=60,
    )
    started = observer.wait_for("started", lambda: observer.for_message(message_id))
    instance_id = str(started[0].data["instance_id"])
    observer.wait_for(
        "completed",
        lambda: [e for e in observer.for_instance(instance_id) if e.data["event"] == "completed"],
        timeout=60,
    )
    assert {str(e.data["instance_id"]) for e in observer.for_message(message_id)} == {instance_id}
    changes = observer.by_instance("workflow.status")[instance_id]
    assert {kind: len(ids) for kind, ids in changes.items()} == {"started": 1, "completed": 1}
    state = worker.wait_status(instance_id, {"COMPLETED"})
    assert json.loads(state.serialized_output) == "hello, twice"
    # Its state and the message's one done record are in PostgreSQL.
    assert _rows(stack, f"%||{instance_id}||%") > 0, "no workflow state in PostgreSQL"
    assert _done_records(stack, "workflow.start", message_id) == 1


def test_the_profile_is_what_the_stack_runs(stack: devstack.Stack, worker: Worker) -> None:
    """The worker's sidecar loaded PostgreSQL v2 and Kafka (not a fallback)."""
    url = f"http://127.0.0.1:{worker.sidecar.http_port}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as response:
        loaded = json.load(response)["components"]
    components = {c["name"]: (c["type"], c["version"]) for c in loaded}
    assert components["statestore"] == ("state.postgresql", "v2")
    assert components["pubsub"] == ("pubsub.kafka", "v1")
