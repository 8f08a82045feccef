"""The metrics endpoint after real traffic: what it counts is what was sent.

A worker of its own (app-id ``metrics-worker``, topics ``metrics.workflow.*``) with metrics on;
starts, a duplicate, two rejections and an approval through the real stack, then its
``/metrics`` scraped over HTTP until it shows them all (with a deadline).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from functools import partial

from prometheus_client.parser import text_string_to_metric_families

from scripts import devstack
from tests.integration.conftest import Observer, Received, Worker, private_worker, unique

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
T = "messaging_destination_name"


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def scrape_until(url: str, ready: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    samples = scrape(url)
    while not ready(samples):
        assert time.monotonic() < deadline, f"metrics never got there: {sorted(samples.items())}"
        time.sleep(0.2)
        samples = scrape(url)
    return samples


def test_the_endpoint_counts_what_was_sent(stack: devstack.Stack, observer: Observer) -> None:
    port = devstack.free_port()
    env = {
        "WORKER_METRICS_ENABLED": "true",
        "WORKER_METRICS_PORT": str(port),
        "WORKER_WATCH_RECHECK_SECONDS": "1",  # the instance counts follow within a second
        "WORKER_WATCH_SWEEP_SECONDS": "1",
        "WORKER_WATCH_LEASE_SECONDS": "4",
    }
    with private_worker(stack, "metrics", env=env) as worker:
        url = f"http://127.0.0.1:{port}/metrics"
        assert f"metrics: {url}" in worker.proc.log.read_text(), "address not logged"
        _traffic(worker, observer)
        start, approval = worker.topic("workflow.start"), worker.topic("workflow.approval")

        def handled(samples: Samples) -> bool:
            return (
                total(samples, "workflow_worker_messages_total", **{T: start}) >= 7
                and total(samples, "workflow_worker_messages_total", **{T: approval}) >= 1
                and value(samples, "workflow_worker_instances", status="COMPLETED") >= 4
            )

        samples = scrape_until(url, handled)

    def outcome(topic: str, outcome: str, reason: str = "") -> float:
        labels = {T: topic, "outcome": outcome, "reason": reason}
        return value(samples, "workflow_worker_messages_total", **labels)

    # per topic and outcome, the rejections under their reasons
    assert outcome(start, "success") == 4
    assert outcome(start, "duplicate") == 1
    assert outcome(start, "drop", "invalid_message") == 1
    assert outcome(start, "drop", "unknown_workflow") == 1
    assert outcome(approval, "success") == 1
    assert total(samples, "workflow_worker_messages_total", outcome="drop") == 2
    # every delivery received was handled once (no redelivery, nothing parked)
    for topic in (start, approval):
        received = total(samples, "messaging_client_consumed_messages_total", **{T: topic})
        handled_here = total(samples, "workflow_worker_messages_total", **{T: topic})
        assert received == handled_here, topic
        timed = total(samples, "messaging_process_duration_seconds_count", **{T: topic})
        assert timed == handled_here, topic
    dropped = {T: start, "error_type": "invalid_message"}
    assert total(samples, "messaging_process_duration_seconds_count", **dropped) == 1
    assert total(samples, "workflow_worker_messages_in_flight") == 0
    # status events per type: the duplicate republished its `started`
    events = "workflow_worker_status_events_total"
    assert value(samples, events, event_type="started", result="published") == 5
    assert value(samples, events, event_type="completed", result="published") == 4
    assert value(samples, events, event_type="rejected", result="published") == 2
    assert value(samples, events, event_type="event_raised", result="published") == 1
    assert total(samples, events, result="failed") == 0
    # sidecar calls per operation: one start per instance, one raise; each event published
    # alone, or with others ready at once in a bulk publish (of 2 to 64 events)
    calls = "workflow_worker_sidecar_call_duration_seconds_count"
    assert value(samples, calls, operation="start", result="ok") == 4
    assert value(samples, calls, operation="raise", result="ok") == 1
    alone = value(samples, calls, operation="publish", result="ok")
    bulks = value(samples, calls, operation="publish_bulk", result="ok")
    in_bulk = total(samples, events, result="published") - alone
    assert 2 * bulks <= in_bulk <= 64 * bulks, (alone, bulks, in_bulk)
    assert value(samples, calls, operation="get", result="ok") >= 5  # existence checks
    # a claim per message, alone; its done record alone or with others in a bulk save
    saves = value(samples, calls, operation="state_save", result="ok")
    bulk_saves = value(samples, calls, operation="state_save_bulk", result="ok")
    assert saves >= 7 and saves + 2 * bulk_saves >= 2 * 7
    assert value(samples, calls, operation="list", result="ok") >= 1  # the watch's sweep
    # the watch's view: every instance finished, none stalled
    assert value(samples, "workflow_worker_instances", status="COMPLETED") == 4
    assert total(samples, "workflow_worker_instances") == 4
    assert value(samples, "workflow_worker_instances_stalled") == 0


def _traffic(worker: Worker, observer: Observer) -> None:
    """3 greetings, a redelivered start, an invalid one, one of a workflow not hosted, and a
    waiting workflow approved; returns once every answer is on the status topic."""
    status = worker.topic("workflow.status")
    start, approval = worker.topic("workflow.start"), worker.topic("workflow.approval")

    def events_of(instance_id: str, kind: str) -> Callable[[], list[Received]]:
        return lambda: [
            e for e in observer.for_instance(instance_id, status) if e.data["event"] == kind
        ]

    greetings = [unique("metrics-hi") for _ in range(3)]
    first = ""
    for instance_id in greetings:
        body = {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "m"}
        message_id = observer.publish(start, body)
        first = first or message_id
    for instance_id in greetings:
        observer.wait_for(f"{instance_id} completed", events_of(instance_id, "completed"))
    # the same message again (a redelivery): a duplicate, its `started` republished
    body = {"workflow": "greeting_workflow", "instance_id": greetings[0], "input": "m"}
    observer.publish(start, body, message_id=first)
    observer.wait_for(
        "the duplicate's started", lambda: observer.for_message(first, status), count=2
    )
    bad = observer.publish(start, None, raw=b"not json")
    foreign = observer.publish(start, {"workflow": "not_hosted_here"})
    for message_id in (bad, foreign):
        observer.wait_for(
            f"{message_id} rejected", partial(observer.for_message, message_id, status)
        )
    waiting = unique("metrics-wait")
    observer.publish(start, {"workflow": "waiting_workflow", "instance_id": waiting})
    observer.wait_for(f"{waiting} started", events_of(waiting, "started"))
    observer.publish(approval, {"instance_id": waiting, "event_name": "go", "data": "yes"})
    observer.wait_for(f"{waiting} completed", events_of(waiting, "completed"))
