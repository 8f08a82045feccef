"""Fixtures that bring up the real stack for integration tests.

Session-wide: placement, scheduler and a Redis server (shared broker and state store), a
status observer (a separate subscriber app with its own sidecar, as a real consumer would be),
and one worker with its sidecar. Everything runs on free ports and is stopped at the end,
also when a test fails; a failing test prints the logs of every process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cloudevents.sdk.event import v1
from dapr.ext.grpc import App
from dapr.ext.workflow import DaprWorkflowClient

from scripts import devstack
from tests.status_contract import contract_errors, order_violations

# Topic prefixes of the private workers (one test's own worker each).
TOPIC_PREFIXES = (
    "purge.",
    "kill.",
    "rep.",
    "term.",
    "pair.",
    "watch.",
    "console.",
    "metrics.",
    "trace.",
    "jsonlog.",
    "ops.",
    "image.",
    "custom.",
    "pod.",
    "typed.",
)
STATUS_TOPICS = ("workflow.status", *(f"{p}workflow.status" for p in TOPIC_PREFIXES))
_GRANT = "workflow-client=workflow.start,workflow.approval,workflow.control"
_SUBSCRIBE_GRANT = "workflow-client=workflow.status,workflow.deadletter"
DEAD_LETTER_TOPICS = ("workflow.deadletter",)


@dataclass
class Received:
    """One CloudEvent as the observer received it."""

    id: str
    type: str
    source: str
    topic: str
    subject: str | None
    data: dict[str, Any]
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observer:
    """Collects what arrives on the status and dead-letter topics; publishes test messages."""

    http_port: int = 0
    # Its sidecar, and the resources folder that sidecar runs with (for a restart).
    sidecar: devstack.Sidecar | None = None
    resources: Path | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Status events that break the published schema (checked with formats, as they come), or
    # this worker's promises beyond it (a rejected event's code).
    schema_errors: list[str] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)  # instances whose disorder was reported

    def record(self, topic: str, event: v1.Event) -> None:
        raw = event.Data()
        # Dead letters carry whatever poison came in: never fail on it (a failing handler
        # would have its sidecar redeliver it for ever).
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {"_raw": text}
        extensions = dict(event.Extensions() or {})
        problems = contract_errors(data) if topic in STATUS_TOPICS else []
        with self.lock:
            self.schema_errors.extend(f"{event.EventID()} ({data}): {p}" for p in problems)
            self.received.append(
                Received(
                    id=str(event.EventID()),
                    type=str(event.EventType()),
                    source=str(event.Source()),
                    topic=topic,
                    subject=extensions.get("subject"),
                    data=data if isinstance(data, dict) else {"_value": data},
                    extensions=extensions,
                )
            )

    def new_contract_problems(self) -> tuple[list[str], dict[str, list[str]]]:
        """Schema errors and order violations not reported before (each is reported once)."""
        with self.lock:
            errors = list(self.schema_errors)
            self.schema_errors.clear()
        violations = {
            key: problems
            for key, problems in self.order_violations().items()
            if key not in self.reported
        }
        self.reported.update(violations)
        return errors, violations

    def order_violations(self) -> dict[str, list[str]]:
        """Instance id -> how its events, ordered by occurred_at, break its lifecycle."""
        per_instance: dict[str, dict[str, dict[str, Any]]] = {}
        for topic in STATUS_TOPICS:
            for r in self.events(topic):
                instance_id = r.data.get("instance_id")
                if instance_id and "occurred_at" in r.data:
                    per_instance.setdefault(f"{topic}/{instance_id}", {}).setdefault(r.id, r.data)
        found = {key: order_violations(events.values()) for key, events in per_instance.items()}
        return {key: problems for key, problems in found.items() if problems}

    def events(self, topic: str = "workflow.status") -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.topic == topic]

    def for_instance(self, instance_id: str, topic: str = "workflow.status") -> list[Received]:
        return [r for r in self.events(topic) if r.data.get("instance_id") == instance_id]

    def for_message(self, message_id: str, topic: str = "workflow.status") -> list[Received]:
        return [r for r in self.events(topic) if r.data.get("correlation_id") == message_id]

    def by_instance(self, topic: str) -> dict[str, dict[str, set[str]]]:
        """instance id -> event type -> the distinct CloudEvent ids seen."""
        summary: dict[str, dict[str, set[str]]] = {}
        for r in self.events(topic):
            instance_id = r.data.get("instance_id")
            if instance_id:
                summary.setdefault(instance_id, {}).setdefault(r.data["event"], set()).add(r.id)
        return summary

    def wait_for(
        self,
        what: str,
        select: Callable[[], list[Received]],
        count: int = 1,
        timeout: float = 60,
    ) -> list[Received]:
        """Wait until ``select()`` returns at least ``count`` events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = select()
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; got "
            f"{[(r.data.get('event'), r.data.get('instance_id')) for r in select()]}"
        )

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        message_id: str | None = None,
        source: str = "integration-tests",
        content_type: str = "application/json",
        raw: bytes | None = None,
        via: int | None = None,
    ) -> str:
        """Publish one CloudEvent with a known id, the way any Dapr client would.

        ``via``: the HTTP port of another sidecar to publish through (default: the observer's,
        app-id ``workflow-client``, which the shared profile allows on the control topics).
        """
        message_id = message_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "specversion": "1.0",
            "id": message_id,
            "source": source,
            "type": "com.example.request",
            "datacontenttype": content_type,
        }
        if raw is not None:  # exact bytes, whatever they are
            envelope["data_base64"] = base64.b64encode(raw).decode()
        else:
            envelope["data"] = data
        body = json.dumps(envelope).encode()
        status = devstack.publish(
            via or self.http_port, topic, body, "application/cloudevents+json"
        )
        assert status == 204, status
        return message_id


@dataclass
class Worker:
    """A worker process with its sidecar, and a workflow client on that sidecar."""

    sidecar: devstack.Sidecar
    proc: devstack.Proc
    client: DaprWorkflowClient
    topic_prefix: str = ""
    env: dict[str, str] = field(default_factory=dict)
    profile: str = "redis"  # the components/ folder its sidecar runs with

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()
        self.sidecar.proc.stop()

    def wait_status(self, instance_id: str, statuses: set[str], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.client.get_workflow_state(instance_id, fetch_payloads=True)
            if state is not None and state.runtime_status.name in statuses:
                return state
            time.sleep(0.2)
        got = state.runtime_status.name if state else None
        raise AssertionError(f"{instance_id} not in {statuses} after {timeout}s (is {got})")


@contextlib.contextmanager
def backend_stack(workdir: Path, backend: str = "redis") -> Iterator[devstack.Stack]:
    """Placement, scheduler and what ``components/<backend>`` connects to, with the test
    client's grants widened to every topic the tests use; stopped at the end."""
    for binary in ("daprd", "placement", "scheduler"):
        if not devstack.dapr_bin(binary).exists():
            pytest.fail(f"{devstack.dapr_bin(binary)} is missing: run scripts/setup.sh")
    with devstack.Stack(workdir) as running:
        # The test client (app-id workflow-client) also drives the private workers' topics.
        extra = [
            f"{p}workflow.{t}" for p in TOPIC_PREFIXES for t in ("start", "approval", "control")
        ]
        running.component_patches[_GRANT] = ",".join([_GRANT, *extra])
        # It may subscribe only to the topics listed for it: all that the observer reads.
        observed = ",".join([*STATUS_TOPICS, *DEAD_LETTER_TOPICS])
        running.component_patches[_SUBSCRIBE_GRANT] = f"workflow-client={observed}"
        if backend != "default":
            pubsub = (devstack.COMPONENTS / backend / "pubsub.yaml").read_text()
            assert _GRANT in pubsub and _SUBSCRIBE_GRANT in pubsub, "grants to widen are gone"
        # Redis: redeliver what a crashed sidecar held after 10 s rather than 30 s.
        running.component_patches['value: "30s"'] = 'value: "10s"'
        try:
            running.start_placement()
            running.start_scheduler()
            running.start_backend(backend)
        except Exception:
            print(running.failed_logs())
            raise
        yield running


# The shared backends (components/<profile>) the guarantee tests run on, each with a stack of
# its own; TEST_BACKENDS (comma-separated) narrows the set.
BACKENDS = tuple(
    os.environ.get("TEST_BACKENDS", "redis,postgres-kafka,postgres-rabbitmq").split(",")
)


def per_backend() -> tuple[Any, Any, Any]:
    """Module-scoped ``backend``, ``stack`` and ``observer`` fixtures, parametrized over
    BACKENDS, for a test module to take in place of the session's Redis ones::

        backend, stack, observer = per_backend()

    Every test of the module that uses them runs once per backend (pytest groups the tests by
    backend, so each stack is started once per module); the autouse contract checks and the
    logs on failure apply to each, as they read ``observer`` and ``stack``."""

    @pytest.fixture(scope="module", params=BACKENDS)
    def backend(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture(scope="module")
    def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
        with backend_stack(tmp_path_factory.mktemp(backend), backend) as running:
            yield running

    @pytest.fixture(scope="module")
    def observer(stack: devstack.Stack, backend: str) -> Iterator[Observer]:
        with observing(stack, backend) as collected:
            yield collected

    return backend, stack, observer


def on_backend(name: str) -> tuple[Any, Any]:
    """Module-scoped ``stack`` and ``observer`` fixtures on the one backend ``name``, for a
    test module to take in place of the session's Redis ones::

        stack, observer = on_backend("postgres-kafka")
    """

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
        with backend_stack(tmp_path_factory.mktemp(name), name) as running:
            yield running

    @pytest.fixture(scope="module")
    def observer(stack: devstack.Stack) -> Iterator[Observer]:
        with observing(stack, name) as collected:
            yield collected

    return stack, observer


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
    with backend_stack(tmp_path_factory.mktemp("stack"), "redis") as running:
        yield running


@contextlib.contextmanager
def observing(stack: devstack.Stack, backend: str = "redis") -> Iterator[Observer]:
    """The status observer (app-id workflow-client, its own sidecar on ``backend``'s
    pub/sub); what it received is checked against the status contract at the end."""
    collected = Observer()
    app = App()
    app.register_health_check(lambda: None)
    for topic in (*STATUS_TOPICS, *DEAD_LETTER_TOPICS):

        def on_event(event: v1.Event, topic: str = topic) -> None:
            collected.record(topic, event)

        on_event.__name__ = f"on_{topic.replace('.', '_')}"
        app.subscribe("pubsub", topic)(on_event)
    app_port = devstack.free_port()
    thread = threading.Thread(target=app.run, args=(app_port,), daemon=True)
    thread.start()
    devstack.wait_until(lambda: devstack.port_open(app_port), 10, "observer app")
    components = stack.components(backend)
    # One delivery at a time, as an ordered consumer reads (Redis Streams and RabbitMQ deliver
    # as many at once as their settings say; Kafka each partition's one after another).
    resources = devstack.one_at_a_time(components)
    sidecar = stack.start_sidecar(
        "workflow-client", resources, app_port=app_port, wait_for_app=True
    )
    collected.http_port = sidecar.http_port
    collected.sidecar, collected.resources = sidecar, resources
    try:
        yield collected
    finally:
        collected.sidecar.proc.stop()
        app.stop()
    # Events that came after the last test ended are checked too.
    errors, violations = collected.new_contract_problems()
    assert not errors, "status events that break the schema or the contract:\n" + "\n".join(
        errors[:20]
    )
    assert not violations, f"events out of order by occurred_at: {violations}"


@pytest.fixture(scope="session")
def observer(stack: devstack.Stack) -> Iterator[Observer]:
    with observing(stack, "redis") as collected:
        yield collected


def start_worker(
    stack: devstack.Stack,
    app_id: str,
    *,
    profile: str = "redis",
    env: dict[str, str] | None = None,
    topic_prefix: str = "",
    name: str | None = None,
    app_health_probe_seconds: int | None = None,
    trust_ready_line: bool = False,
    config: Path = devstack.CONFIG,
) -> Worker:
    """``config``: the sidecar's Configuration (default: the project's)."""
    app_port = devstack.free_port()
    workdir = stack.workdir / (name or app_id)
    workdir.mkdir(exist_ok=True)
    sidecar = stack.start_sidecar(
        app_id,
        stack.components(profile),
        app_port=app_port,
        cwd=workdir,
        name=f"daprd-{name or app_id}",
        app_health_probe_seconds=app_health_probe_seconds,
        config=config,
    )
    worker_env = {
        "WORKER_APP_ID": app_id,
        "WORKER_DEAD_LETTER_TOPIC": "workflow.deadletter",
        "WORKER_WORKFLOW_MODULES": '["tests.integration.user_workflows"]',
        "WORKER_CLAIM_LEASE_SECONDS": "5",
        # Messages for unknown instances are rejected after this (default 180 s; the pairs
        # test runs a worker with the default).
        "WORKER_UNKNOWN_INSTANCE_GRACE_SECONDS": "6",
        "PYTHONPATH": str(devstack.PROJECT),
        **{
            f"WORKER_{t.upper()}_TOPIC": f"{topic_prefix}workflow.{t}"
            for t in ("start", "approval", "control", "status")
        },
        **(env or {}),
    }
    proc = stack.start_worker(
        sidecar, name=name or app_id, env=worker_env, trust_ready_line=trust_ready_line
    )
    client = DaprWorkflowClient(host="127.0.0.1", port=str(sidecar.grpc_port))
    return Worker(sidecar, proc, client, topic_prefix, worker_env, profile)


@contextlib.contextmanager
def private_worker(
    stack: devstack.Stack,
    name: str,
    env: dict[str, str] | None = None,
    config: Path = devstack.CONFIG,
    profile: str = "redis",
) -> Iterator[Worker]:
    """A worker of its own for one test: app-id ``<name>-worker``, topics ``<name>.workflow.*``
    (the prefix must be in TOPIC_PREFIXES); stopped, with its sidecar, at the end.
    ``config``: its sidecar's Configuration."""
    assert f"{name}." in TOPIC_PREFIXES, f"add {name}. to TOPIC_PREFIXES"
    running = start_worker(
        stack, f"{name}-worker", topic_prefix=f"{name}.", env=env, config=config, profile=profile
    )
    try:
        yield running
    finally:
        running.stop()


def restart_worker(stack: devstack.Stack, worker: Worker, name: str) -> None:
    """Start the worker process again on the same sidecar (after a crash)."""
    worker.proc = stack.start_worker(worker.sidecar, name=name, env=worker.env)


def restart_sidecar(stack: devstack.Stack, worker: Worker, name: str) -> None:
    """Start the worker's sidecar again, on the same ports, for the same worker process."""
    old = worker.sidecar
    worker.sidecar = stack.start_sidecar(
        old.app_id,
        stack.components(worker.profile),
        app_port=old.app_port,
        name=name,
        grpc_port=old.grpc_port,
        http_port=old.http_port,
    )


def restart_observer_sidecar(stack: devstack.Stack, observer: Observer, name: str) -> None:
    """Stop the observer's sidecar and start it again on the same ports and resources."""
    old, resources = observer.sidecar, observer.resources
    assert old is not None and resources is not None, "not an observer started by `observing`"
    old.proc.stop()
    observer.sidecar = stack.start_sidecar(
        old.app_id,
        resources,
        app_port=old.app_port,
        name=name,
        grpc_port=old.grpc_port,
        http_port=old.http_port,
        wait_for_app=True,
    )


@pytest.fixture(scope="session")
def worker(stack: devstack.Stack, observer: Observer) -> Iterator[Worker]:
    running = start_worker(stack, "workflow-worker")
    yield running
    running.client.close()


@pytest.fixture(autouse=True)
def _status_contract(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every status event the observer receives fits the published schema (formats checked)
    and carries what the worker promises beyond it (a code on every rejected), and each
    instance's events, ordered by occurred_at, tell a possible life."""
    yield
    if "observer" not in request.fixturenames:
        return
    seen: Observer = request.getfixturevalue("observer")
    errors, violations = seen.new_contract_problems()
    assert not errors, "status events that break the schema or the contract:\n" + "\n".join(
        errors[:20]
    )
    assert not violations, f"events out of order by occurred_at: {violations}"


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print every process's log tail when an integration test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "stack" in request.fixturenames:
        running: devstack.Stack = request.getfixturevalue("stack")
        print(running.failed_logs())
        # CI shows the end of the output: end with why the test failed.
        print(f"----- {request.node.nodeid} failed:\n{report.longreprtext[-3000:]}")


def publish_plain(sidecar: devstack.Sidecar, topic: str, body: dict[str, Any]) -> None:
    """What `dapr publish` does: POST plain JSON to the sidecar's publish endpoint (the
    sidecar wraps it in a CloudEvent of its own)."""
    status = devstack.publish(
        sidecar.http_port, topic, json.dumps(body).encode(), "application/json"
    )
    assert status == 204, status


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


PROJECT: Path = devstack.PROJECT
