"""JSON logs end to end: a real worker with WORKER_LOG_FORMAT=json takes traffic and stops;
every line of its output is one JSON object, and the lines about a message carry its fields."""

from __future__ import annotations

import json
import uuid
from typing import Any

from scripts import devstack
from tests.integration.conftest import Observer, private_worker, unique

STATUS = "jsonlog.workflow.status"


def _publish_traced(observer: Observer, topic: str, data: Any, traceparent: str) -> str:
    """A structured CloudEvent that carries a trace context of its own (``traceid`` too:
    with it the sidecar keeps the event's trace rather than putting its own)."""
    message_id = str(uuid.uuid4())
    envelope = {
        "specversion": "1.0",
        "id": message_id,
        "source": "json-log-test",
        "type": "com.example.request",
        "datacontenttype": "application/json",
        "traceparent": traceparent,
        "traceid": traceparent,
        "data": data,
    }
    body = json.dumps(envelope).encode()
    status = devstack.publish(observer.http_port, topic, body, "application/cloudevents+json")
    assert status == 204, status
    return message_id


def test_every_line_is_json_and_carries_the_message_fields(
    stack: devstack.Stack, observer: Observer
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    instance_id = unique("jsonlog")
    env = {"WORKER_LOG_FORMAT": "json", "WORKER_ECHO_STATUS": "true"}
    with private_worker(stack, "jsonlog", env=env) as running:
        start = _publish_traced(
            observer,
            running.topic("workflow.start"),
            {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "json"},
            traceparent,
        )
        invalid = observer.publish(running.topic("workflow.start"), {"workflow": 42})
        observer.wait_for(
            "completed",
            lambda: [
                e
                for e in observer.for_instance(instance_id, STATUS)
                if e.data["event"] == "completed"
            ],
        )
        observer.wait_for("rejected", lambda: observer.for_message(invalid, STATUS))
        log = running.proc.log
    # stopped (SIGTERM): its shutdown lines are in the log too

    lines = log.read_text().splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError as error:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from error
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["message"].startswith("worker ready") for r in records)
    assert any(r["message"] == "worker stopped" for r in records)

    # The audit line of the start: its fields as fields, with the message's and its trace id
    # (received in the CloudEvent, passed through: no tracing SDK in this worker).
    audits = [r for r in records if r["logger"] == "worker.audit"]
    started = [r for r in audits if r.get("message_id") == start]
    assert len(started) == 1, audits
    assert started[0]["message"] == "audit"
    assert started[0]["event"] == "started"
    assert started[0]["outcome"] == "success"
    assert started[0]["instance_id"] == instance_id
    assert started[0]["topic"] == running.topic("workflow.start")
    assert started[0]["source"] == "json-log-test"
    assert started[0]["trace_id"] == trace_id

    # The `completed` echo is logged by the workflow's report activity, later: it carries the
    # instance and the start message's trace, which rode in the instance's input.
    echoes = [r for r in records if r["logger"] == "worker.status" and "completed" in r["message"]]
    assert [e["instance_id"] for e in echoes] == [instance_id], echoes
    assert echoes[0]["trace_id"] == trace_id

    # The rejection: a warning about the invalid message, with its id and topic, and a drop
    # audited.
    warned = [r for r in records if r["level"] == "WARNING" and r.get("message_id") == invalid]
    assert warned and warned[0]["topic"] == running.topic("workflow.start"), warned
    dropped = [r for r in audits if r.get("message_id") == invalid]
    assert [(d["event"], d["outcome"]) for d in dropped] == [("rejected", "drop")]
