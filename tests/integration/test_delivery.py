"""Delivery guarantees on every shared backend (real Dapr stack): the redis profile (Redis
Streams and Redis state), postgres-kafka and postgres-rabbitmq.

Nothing lost, nothing doubled: under several replicas, crashes, an unreachable sidecar, the
broker and the database each restarted, early approvals, poison, redelivery storms and
SIGTERM. Every test runs once per backend: the module's ``stack``, ``observer`` and
``worker`` are a stack of the backend's own (``backend_stack``), in place of the session's
Redis ones, so the autouse contract checks (schema, per-instance order by occurred_at) apply
on each. TEST_BACKENDS (comma-separated) narrows the set. Counts scale with
DELIVERY_SCALE (default 1). Each test is bounded in count and time and stops what it starts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Worker,
    per_backend,
    private_worker,
    restart_observer_sidecar,
    restart_sidecar,
    restart_worker,
    start_worker,
    unique,
)
from tests.integration.test_approval import worker_history

SCALE = float(os.environ.get("DELIVERY_SCALE", "1"))
# Which process of each backend's stack is its broker and which its database.
BROKER = {"redis": "redis", "postgres-kafka": "kafka", "postgres-rabbitmq": "rabbitmq"}
DATABASE = {"redis": "redis", "postgres-kafka": "postgres", "postgres-rabbitmq": "postgres"}
# Approvals published before their start are parked this long: on Kafka the first join of a
# consumer group can keep a start back for seconds after its approval has come.
_PARKING = {"WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS": "120"}
# After a sidecar is killed, daprd 1.18.2 can stall an orchestration whose work item was in
# flight during the actor rebalancing ("Ignoring complete task which no longer exists"): it
# stays RUNNING and is re-run after a 5-minute timeout, or (2 runs in ~10) not within
# 8 minutes. The tests that kill a sidecar wait this long, then tell such stalls apart (see
# `wait_exactly_once_or_stalled_in_daprd`).
SIDECAR_LOSS_RECOVERY = 420
# An instance with no step at all for this long is stalled in daprd: a report the worker
# retries (at most 60 s apart) would have moved it.
_NO_PROGRESS_FOR = timedelta(seconds=120)


def scaled(n: int) -> int:
    return max(10, int(n * SCALE))


def _approval_start(instance_id: str) -> dict[str, Any]:
    return {
        "workflow": "approval_workflow",
        "instance_id": instance_id,
        "input": {"order_id": instance_id, "amount": 5000, "approval_timeout_seconds": 900},
    }


def _greeting(instance_id: str) -> dict[str, Any]:
    return {"workflow": "greeting_workflow", "instance_id": instance_id, "input": instance_id}


def publish_all(
    observer: Observer,
    topic: str,
    bodies: list[dict[str, Any]],
    pause_at: int | None = None,
    pause: threading.Event | None = None,
) -> None:
    """Publish like a producer: retry a refused publish until a deadline.

    A body's ``_id`` key, when present, is not sent: it is the CloudEvent id to publish under
    (the same id again is a redelivery).
    """
    for i, message in enumerate(bodies):
        message_id = message.get("_id")
        body = {k: v for k, v in message.items() if k != "_id"}
        if pause is not None and pause_at is not None and i == pause_at:
            pause.set()
        deadline = time.monotonic() + 60
        while True:
            try:
                observer.publish(topic, body, message_id=message_id)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def wait_reported(
    observer: Observer, topic: str, instance_ids: list[str], events: tuple[str, ...], timeout: float
) -> list[str]:
    """Wait until every instance has reported each of ``events``; returns those that have not."""
    deadline = time.monotonic() + timeout
    while True:
        summary = observer.by_instance(topic)
        missing = [i for i in instance_ids if any(e not in summary.get(i, {}) for e in events)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def assert_none_doubled(observer: Observer, topic: str, instance_ids: list[str]) -> None:
    summary = observer.by_instance(topic)
    doubled = {
        i: {e: len(ids) for e, ids in summary.get(i, {}).items() if len(ids) > 1}
        for i in instance_ids
    }
    doubled = {i: d for i, d in doubled.items() if d}
    assert not doubled, f"changes reported under several ids (done twice): {doubled}"


def wait_exactly_once(
    observer: Observer, topic: str, instance_ids: list[str], events: tuple[str, ...], timeout: float
) -> None:
    """Every instance reports each of ``events`` under exactly one CloudEvent id."""
    missing = wait_reported(observer, topic, instance_ids, events, timeout)
    summary = observer.by_instance(topic)
    assert not missing, (
        f"{len(missing)} instances lack some of {events}: "
        f"{ {i: sorted(summary.get(i, {})) for i in missing[:5]} }"
    )
    assert_none_doubled(observer, topic, instance_ids)


def _not_stalled(worker: Worker, instance_ids: list[str]) -> dict[str, str]:
    """Those of ``instance_ids`` that daprd does not show as stalled, and what it shows."""
    unexplained: dict[str, str] = {}
    for instance_id in instance_ids:
        state = worker.client.get_workflow_state(instance_id)
        if state is None:
            unexplained[instance_id] = "not found"
            continue
        idle = datetime.now(UTC).replace(tzinfo=None) - state.last_updated_at
        if state.runtime_status.name != "RUNNING" or idle < _NO_PROGRESS_FOR:
            unexplained[instance_id] = f"{state.runtime_status.name}, last step {idle} ago"
    return unexplained


def wait_exactly_once_or_stalled_in_daprd(
    worker: Worker, observer: Observer, topic: str, instance_ids: list[str]
) -> None:
    """`wait_exactly_once` for `started` and `completed`, except for instances daprd stalled.

    Stalled: `started` reported, and daprd shows the instance RUNNING with no step for
    _NO_PROGRESS_FOR; no change happened, so none was missed. Everything else stays strict:
    one `started` per message, nothing doubled, and every instance daprd finished has its
    `completed`. More than 2% stalled fails: that is no longer a rare daprd fault. Once all
    that is missing is stalled, there is no point waiting for the rest of the time.
    """
    events = ("started", "completed")
    first_look = _NO_PROGRESS_FOR.total_seconds() + 30
    missing = wait_reported(observer, topic, instance_ids, events, first_look)
    if missing and _not_stalled(worker, missing):
        missing = wait_reported(
            observer, topic, instance_ids, events, SIDECAR_LOSS_RECOVERY - first_look
        )
    assert_none_doubled(observer, topic, instance_ids)
    summary = observer.by_instance(topic)
    never_started = [i for i in missing if "started" not in summary.get(i, {})]
    assert not never_started, f"{len(never_started)} instances lack `started`: {never_started[:5]}"
    unexplained = _not_stalled(worker, missing)
    assert not unexplained, f"instances without `completed`, not stalled in daprd: {unexplained}"
    assert len(missing) <= len(instance_ids) // 50, f"too many stalled in daprd: {missing}"
    if missing:
        print(f"\n{len(missing)} instances stalled in daprd (RUNNING, no step): {missing}")


backend, stack, observer = per_backend()


@pytest.fixture(scope="module")
def worker(stack: devstack.Stack, observer: Observer, backend: str) -> Iterator[Worker]:
    running = start_worker(stack, "workflow-worker", profile=backend, env=_PARKING)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def replicas(stack: devstack.Stack, observer: Observer, backend: str) -> Iterator[list[Worker]]:
    """Two replicas of one app-id, each with its own sidecar, sharing the backend."""
    pair = [
        start_worker(
            stack, "replica-worker", topic_prefix="rep.", name=f"replica-{n}", profile=backend
        )
        for n in ("a", "b")
    ]
    yield pair
    for replica in pair:
        replica.stop()


def _handled(worker: Worker) -> int:
    return worker.proc.log.read_text(errors="replace").count('"outcome": "success"')


def test_two_replicas_start_and_approve_each_instance_once(
    replicas: list[Worker], observer: Observer
) -> None:
    n = scaled(500)
    ids = [unique("rep") for _ in range(n)]
    handled_before = [_handled(r) for r in replicas]
    started_at = time.monotonic()
    publish_all(observer, "rep.workflow.start", [_approval_start(i) for i in ids])
    wait_exactly_once(observer, "rep.workflow.status", ids, ("started",), timeout=300)
    publish_all(observer, "rep.workflow.approval", [{"instance_id": i, "data": True} for i in ids])
    wait_exactly_once(
        observer, "rep.workflow.status", ids, ("started", "event_raised", "completed"), timeout=300
    )
    print(
        f"\n{n} instances started, approved and completed by 2 replicas in "
        f"{time.monotonic() - started_at:.1f}s"
    )
    shares = [_handled(r) - before for r, before in zip(replicas, handled_before, strict=True)]
    assert all(share > 0 for share in shares), f"both replicas consume: {shares}"
    completed = [
        e
        for e in observer.events("rep.workflow.status")
        if e.data["event"] == "completed" and e.data["instance_id"] in set(ids)
    ]
    assert {e.data["output"]["status"] for e in completed} == {"approved"}


def test_replica_killed_mid_stream_loses_and_doubles_nothing(
    stack: devstack.Stack, replicas: list[Worker], observer: Observer
) -> None:
    n = scaled(200)
    ids = [unique("crash") for _ in range(n)]
    halfway = threading.Event()
    producer = threading.Thread(
        target=publish_all,
        args=(observer, "rep.workflow.start", [_greeting(i) for i in ids], n // 3, halfway),
    )
    producer.start()
    assert halfway.wait(60)
    victim = replicas[0]
    victim.proc.kill()
    victim.sidecar.proc.kill()
    restart_sidecar(stack, victim, "daprd-replica-a-2")
    restart_worker(stack, victim, "replica-a-2")
    producer.join(120)
    wait_exactly_once_or_stalled_in_daprd(replicas[1], observer, "rep.workflow.status", ids)


def test_sidecar_down_for_a_while_then_back(
    stack: devstack.Stack, replicas: list[Worker], observer: Observer
) -> None:
    """The worker outlives its sidecar and serves again, by itself, once it is back."""
    worker = replicas[1]
    first = [unique("before") for _ in range(scaled(30))]
    publish_all(observer, "rep.workflow.start", [_greeting(i) for i in first])
    worker.sidecar.proc.kill()  # unreachable; the worker process keeps running
    during = [unique("during") for _ in range(scaled(30))]
    publish_all(observer, "rep.workflow.start", [_greeting(i) for i in during])
    time.sleep(3)  # down for a while (the point of the test), then back on the same ports
    restart_sidecar(stack, worker, "daprd-replica-b-2")
    assert worker.proc.alive(), "the worker must survive its sidecar"
    handled = _handled(worker)
    after = [unique("after") for _ in range(scaled(60))]
    publish_all(observer, "rep.workflow.start", [_greeting(i) for i in after])
    wait_exactly_once_or_stalled_in_daprd(
        replicas[0], observer, "rep.workflow.status", first + during + after
    )
    devstack.wait_until(lambda: _handled(worker) > handled, 60, "replica b serving again")


@pytest.mark.parametrize("which", ["broker", "database"])
def test_backend_restart_mid_stream(
    stack: devstack.Stack, replicas: list[Worker], observer: Observer, backend: str, which: str
) -> None:
    """The broker, or the database (state store and the worker's records), stopped cleanly
    and started again on the same port and data while starts are coming: each instance
    started and completed once."""
    process = (BROKER if which == "broker" else DATABASE)[backend]
    if which == "database" and process == BROKER[backend]:
        pytest.skip(f"{backend}: the database is the broker's process, restarted above")
    ids = [unique(which) for _ in range(scaled(100))]
    publish_all(observer, "rep.workflow.start", [_greeting(i) for i in ids[: len(ids) // 2]])
    stack.restart(process)
    if process == "rabbitmq":
        # components-contrib 1.18.3's RabbitMQ subscriber does not always come back from a
        # broker restart: seen here, a consumer that holds a prefetch's worth of messages
        # unacknowledged and hands none of them on, on the worker's start queue and on the
        # observer's status queue, until its sidecar's connection closes. Nothing is lost
        # (the broker requeues what a closed connection held), but nothing moves: restart the
        # sidecars, as an operator must (README, "Choosing a backend").
        for n, replica in enumerate(replicas):
            replica.sidecar.proc.stop()
            restart_sidecar(stack, replica, f"daprd-replica-{'ab'[n]}-{which}")
        restart_observer_sidecar(stack, observer, f"daprd-workflow-client-{which}")
    publish_all(observer, "rep.workflow.start", [_greeting(i) for i in ids[len(ids) // 2 :]])
    wait_exactly_once(observer, "rep.workflow.status", ids, ("started", "completed"), timeout=300)


def test_approvals_published_before_their_starts_are_parked_and_delivered(
    worker: Worker, observer: Observer
) -> None:
    """Each approval comes before the start of its instance (published first): the worker
    parks it, and delivers it once the instance waits for it; raised once each."""
    ids = [unique("early") for _ in range(10)]
    publish_all(observer, "workflow.approval", [{"instance_id": i, "data": True} for i in ids])
    publish_all(observer, "workflow.start", [_approval_start(i) for i in ids])
    wait_exactly_once(
        observer, "workflow.status", ids, ("started", "event_raised", "completed"), timeout=180
    )
    completed = [e for i in ids for e in observer.for_instance(i) if e.data["event"] == "completed"]
    assert {e.data["output"]["status"] for e in completed} == {"approved"}


# ---- poison ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN or Infinity
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_REQUIRED = {
    "workflow.start": "workflow",
    "workflow.approval": "instance_id",
    "workflow.control": "action",
}


@settings(
    max_examples=scaled(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    topic=st.sampled_from(sorted(_REQUIRED)),
    body=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_generated_poison_is_rejected_and_dead_lettered(
    worker: Worker, observer: Observer, topic: str, body: dict[str, Any]
) -> None:
    body.pop(_REQUIRED[topic], None)  # never valid without its required field
    message_id = observer.publish(topic, body)
    rejected = observer.wait_for("rejection", lambda: observer.for_message(message_id), timeout=30)
    assert rejected[0].data["event"] == "rejected"
    assert rejected[0].data["reason"]
    observer.wait_for(
        "dead letter",
        lambda: [e for e in observer.events("workflow.deadletter") if e.id == message_id],
        timeout=30,
    )


@settings(
    max_examples=scaled(20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(min_size=1, max_size=200).filter(lambda b: not _utf8(b)))
def test_generated_non_utf8_bytes_are_rejected(
    worker: Worker, observer: Observer, raw: bytes
) -> None:
    message_id = observer.publish("workflow.start", None, raw=raw)
    rejected = observer.wait_for("rejection", lambda: observer.for_message(message_id), timeout=30)
    assert "not UTF-8" in rejected[0].data["reason"]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("topic", "body", "raw", "content_type", "reason"),
    [
        ("workflow.start", {"workflow": 123}, None, "application/json", "workflow"),
        (
            "workflow.start",
            {"workflow": "counter_workflow", "input": "x" * 1_500_000},
            None,
            "application/json",
            "the limit is",
        ),
        (
            "workflow.control",
            {"action": "reboot", "instance_id": "x"},
            None,
            "application/json",
            "action",
        ),
        (
            "workflow.approval",
            {"instance_id": ["not", "a", "string"]},
            None,
            "application/json",
            "instance_id",
        ),
        ("workflow.start", None, b"<html></html>", "text/html", "unsupported content type"),
        (
            "workflow.start",
            None,
            b"\x00\x01\x02",
            "application/octet-stream",
            "unsupported content type",
        ),
        (
            "workflow.control",
            None,
            b'{"action": "query", "instance_id": ',
            "application/json",
            "not valid JSON",
        ),
    ],
)
def test_hand_written_poison(
    worker: Worker,
    observer: Observer,
    topic: str,
    body: dict[str, Any] | None,
    raw: bytes | None,
    content_type: str,
    reason: str,
    backend: str,
) -> None:
    if backend == "postgres-kafka" and reason == "the limit is":
        # Kafka refuses a message above 1 MB at the publish (the producer's maxMessageBytes
        # and the broker's message.max.bytes): the publisher gets the error (500 from its
        # sidecar), and the worker never sees the message, so there is nothing to reject.
        with pytest.raises(AssertionError, match="500"):
            observer.publish(topic, body, raw=raw, content_type=content_type)
        return
    message_id = observer.publish(topic, body, raw=raw, content_type=content_type)
    rejected = observer.wait_for("rejection", lambda: observer.for_message(message_id), timeout=30)
    assert reason in rejected[0].data["reason"]
    observer.wait_for(
        "dead letter",
        lambda: [e for e in observer.events("workflow.deadletter") if e.id == message_id],
        timeout=30,
    )


def test_worker_keeps_serving_after_poison(worker: Worker, observer: Observer) -> None:
    instance_id = unique("after-poison")
    observer.publish("workflow.start", _greeting(instance_id))
    worker.wait_status(instance_id, {"COMPLETED"})


# ---- redelivery storm ----------------------------------------------------------------------


def test_redelivery_storm_ends_as_if_delivered_once(worker: Worker, observer: Observer) -> None:
    rng = random.Random(7)
    orders = [unique("storm-order") for _ in range(scaled(20))]
    greetings = [unique("storm-greet") for _ in range(scaled(20))]
    derived = [{"workflow": "greeting_workflow", "input": n} for n in range(scaled(20))]
    starts = [_approval_start(i) for i in orders] + [_greeting(i) for i in greetings] + derived
    storm: list[dict[str, Any]] = []
    for body in starts:
        body["_id"] = unique("msg")
        storm += [body] * rng.randint(2, 3)
    rng.shuffle(storm)
    publish_all(observer, "workflow.start", storm)
    derived_ids = {b["_id"] for b in starts if "instance_id" not in b}
    wait_exactly_once(observer, "workflow.status", orders + greetings, ("started",), 120)

    def derived_started() -> list[Any]:
        return [
            e
            for e in observer.events()
            if e.data.get("correlation_id") in derived_ids and e.data["event"] == "started"
        ]

    # Counted by message, not by delivery: a broker may hand the observer one status event
    # twice (Kafka may, after a rebalance), which is allowed (same CloudEvent id).
    observer.wait_for(
        "derived starts",
        lambda: list({e.data["correlation_id"]: e for e in derived_started()}.values()),
        count=len(derived_ids),
    )
    instances = {e.data["instance_id"] for e in derived_started()}
    assert len(instances) == len(derived_ids), (
        "one instance per distinct message, however often it came"
    )
    assert_none_doubled(observer, "workflow.status", sorted(instances))

    approvals: list[dict[str, Any]] = []
    for instance_id in orders:
        approval = {"instance_id": instance_id, "data": True, "_id": unique("msg")}
        approvals += [approval] * rng.randint(2, 3)
    rng.shuffle(approvals)
    publish_all(observer, "workflow.approval", approvals)
    wait_exactly_once(
        observer, "workflow.status", orders, ("started", "event_raised", "completed"), 120
    )
    for instance_id in orders:
        raised = [e for e in worker_history(worker, instance_id) if e == "eventRaised"]
        assert len(raised) == 1, f"{instance_id} got the event {len(raised)} times"


# ---- graceful shutdown ---------------------------------------------------------------------


@pytest.fixture
def term_worker(stack: devstack.Stack, observer: Observer, backend: str) -> Iterator[Worker]:
    with private_worker(stack, "term", profile=backend) as running:
        yield running


def test_sigterm_with_messages_in_flight_loses_nothing(
    stack: devstack.Stack, term_worker: Worker, observer: Observer
) -> None:
    ids = [unique("term") for _ in range(scaled(150))]
    third = threading.Event()
    producer = threading.Thread(
        target=publish_all,
        args=(observer, "term.workflow.start", [_greeting(i) for i in ids], len(ids) // 3, third),
    )
    producer.start()
    assert third.wait(60)
    term_worker.proc.stop(grace=30)  # SIGTERM, then wait for a clean exit
    assert term_worker.proc.popen.returncode == 0, term_worker.proc.log_tail()
    assert "worker stopped" in term_worker.proc.log.read_text()
    # As a rolling update replaces a pod: the sidecar goes too, and a new pair comes up. (An
    # app restarted onto a live sidecar within a second of a graceful stop can hit a daprd
    # 1.18.2 race that leaves the workflow actor types unregistered: see the README.)
    term_worker.sidecar.proc.stop()
    restart_sidecar(stack, term_worker, "daprd-term-worker-2")
    restart_worker(stack, term_worker, "term-worker-2")
    producer.join(120)
    wait_exactly_once(observer, "term.workflow.status", ids, ("started", "completed"), 300)
