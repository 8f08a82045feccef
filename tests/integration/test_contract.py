"""The contract as a consumer meets it: what a new user publishing from outside relies on.

(Every status event the observer receives is also checked against the published schema with
formats on, and for its order by occurred_at: see the `_status_contract` fixture.)
"""

from __future__ import annotations

import time
from typing import Any

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Worker,
    private_worker,
    publish_plain,
    start_worker,
    unique,
)
from tests.integration.test_approval import worker_history

PAIRS = 100


def _order(instance_id: str) -> dict[str, Any]:
    return {
        "workflow": "approval_workflow",
        "instance_id": instance_id,
        "input": {"order_id": instance_id, "amount": 5000, "approval_timeout_seconds": 600},
    }


def test_status_events_carry_their_partition_key_and_time(
    worker: Worker, observer: Observer
) -> None:
    """The README lists partitionkey among the CloudEvent's fields: a consumer sees it."""
    instance_id = unique("pk")
    observer.publish(
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "pk"},
    )
    events = observer.wait_for(
        "started and completed", lambda: observer.for_instance(instance_id), count=2
    )
    for event in events:
        assert event.extensions.get("partitionkey") == instance_id, event.extensions
        assert event.subject == instance_id
        assert event.data["occurred_at"].endswith(("+00:00", "Z"))


def test_approvals_published_right_after_their_starts_are_never_rejected(
    stack: devstack.Stack, observer: Observer
) -> None:
    """A service publishes a start and at once its approval, 100 times: the topics are
    consumed concurrently, so many approvals come first. None is rejected (they wait for
    their instance), and each is raised exactly once."""
    topic = "pair.workflow.status"
    with private_worker(
        stack, "pair", env={"WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS": "180"}
    ) as paired:
        ids = [unique("pair") for _ in range(PAIRS)]
        for instance_id in ids:
            observer.publish(paired.topic("workflow.start"), _order(instance_id))
            observer.publish(
                paired.topic("workflow.approval"),
                {"instance_id": instance_id, "data": {"approved": True, "approver": "ci"}},
            )
        wanted = set(ids)

        def completed() -> list[Any]:
            return [
                e
                for e in observer.events(topic)
                if e.data.get("instance_id") in wanted and e.data["event"] == "completed"
            ]

        observer.wait_for(f"{PAIRS} completions", completed, count=PAIRS, timeout=180)
        mine = [e for e in observer.events(topic) if e.data.get("instance_id") in wanted]
        rejected = [e.data for e in mine if e.data["event"] == "rejected"]
        assert rejected == []
        for instance_id in ids:
            raised = {
                e.id
                for e in mine
                if e.data["instance_id"] == instance_id and e.data["event"] == "event_raised"
            }
            assert len(raised) == 1, (instance_id, raised)
        for event in completed():
            assert event.data["output"]["status"] == "approved", event.data
        for instance_id in ids[:: PAIRS // 10]:  # the workflow's own record of raised events
            history = worker_history(paired, instance_id)
            assert history.count("eventRaised") == 1, (instance_id, history)


def test_an_approval_whose_instance_never_appears_is_rejected_after_the_grace_period(
    worker: Worker, observer: Observer
) -> None:
    grace = float(worker.env["WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS"])
    published = time.monotonic()
    message_id = observer.publish("workflow.approval", {"instance_id": unique("never")})
    [rejected] = observer.wait_for("rejection", lambda: observer.for_message(message_id))
    assert time.monotonic() - published >= grace
    assert rejected.data["reason"].startswith("unknown instance never-")
    assert "waited" in rejected.data["reason"]
    observer.wait_for(
        "dead letter",
        lambda: [e for e in observer.events("workflow.deadletter") if e.id == message_id],
    )


def _echoed(worker: Worker, event: str, instance_id: str) -> bool:
    lines = worker.proc.log.read_text(errors="replace").splitlines()
    return any(" status " in line and f" {event} {instance_id} " in f"{line} " for line in lines)


def test_embedded_default_handles_what_is_published_right_after_ready(
    stack: devstack.Stack,
) -> None:
    """As `scripts/run.sh` runs it (app health probes every 5 s, in-memory pub/sub): the
    tutorial published the moment the worker says ready loses nothing, and the status events
    show in the worker's output (WORKER_ECHO_STATUS, as dapr.yaml sets it)."""
    running = start_worker(
        stack,
        "fresh-worker",
        profile="default",
        env={"WORKER_ECHO_STATUS": "true"},
        app_health_probe_seconds=5,
        trust_ready_line=True,  # publish the moment "worker ready" is printed
    )
    try:
        order, counter = unique("order"), unique("counter")
        sidecar = running.sidecar
        publish_plain(sidecar, "workflow.start", _order(order))
        publish_plain(
            sidecar, "workflow.start", {"workflow": "counter_workflow", "instance_id": counter}
        )
        publish_plain(sidecar, "workflow.control", {"action": "query", "instance_id": counter})
        publish_plain(
            sidecar, "workflow.approval", {"instance_id": order, "data": {"approved": True}}
        )
        expected = [
            ("started", order),
            ("started", counter),
            ("state", counter),
            ("event_raised", order),
            ("completed", order),
        ]
        devstack.wait_until(
            lambda: all(_echoed(running, e, i) for e, i in expected),
            60,
            f"status lines for {expected} in the worker's output",
        )
        publish_plain(sidecar, "workflow.control", {"action": "suspend", "instance_id": counter})
        devstack.wait_until(lambda: _echoed(running, "suspended", counter), 30, "suspended")
        publish_plain(sidecar, "workflow.control", {"action": "resume", "instance_id": counter})
        devstack.wait_until(lambda: _echoed(running, "resumed", counter), 30, "resumed")
        assert not any(
            " rejected " in line
            for line in running.proc.log.read_text(errors="replace").splitlines()
        )
    finally:
        running.stop()
