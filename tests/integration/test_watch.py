"""The watch: changes made by others (the dapr CLI, other clients, daprd itself) reach the
status topic too, once each, marked observed, as a consumer sees them. Every test runs once
per shared backend (``per_backend``: redis, postgres-kafka, postgres-rabbitmq)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.ext.workflow import DaprWorkflowClient

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Received,
    Worker,
    per_backend,
    restart_worker,
    start_worker,
    unique,
)
from worker.gateway import WorkflowGateway

APP_ID = "watch-worker"
PREFIX = "watch."
TOPIC = f"{PREFIX}workflow.status"
FAST = {
    "WORKER_WATCH_SWEEP_SECONDS": "1",
    "WORKER_WATCH_LEASE_SECONDS": "4",
    "WORKER_WATCH_RECHECK_SECONDS": "2",
    "WORKER_STALL_SECONDS": "3",
    "WORKER_LOG_LEVEL": "DEBUG",
}


backend, stack, observer = per_backend()


@pytest.fixture(scope="module")
def watched(stack: devstack.Stack, observer: Observer, backend: str) -> Iterator[Worker]:
    running = start_worker(stack, APP_ID, topic_prefix=PREFIX, env=FAST, profile=backend)
    yield running
    running.stop()


def cli(*args: str) -> str:
    """`dapr workflow ...` against the watched app, as an operator runs it."""
    result = subprocess.run(
        [str(devstack.dapr_bin("dapr")), "workflow", *args, "--app-id", APP_ID],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"dapr workflow {args}: {result.stdout}{result.stderr}"
    return result.stdout


@contextlib.contextmanager
def cli_purge(instance_id: str) -> Iterator[None]:
    """`dapr workflow purge`: CLI 1.16.5 purges through the sidecar, then deletes the
    instance's scheduler jobs through etcd at localhost:2379, hard-coded; the test stack's
    scheduler listens elsewhere (free ports), so the CLI waits there until it is stopped."""
    command = [str(devstack.dapr_bin("dapr")), "workflow", "purge", instance_id, "-a", APP_ID]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.kill()
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
        assert "Purging 1 workflow instance" in output, output


def wait_event(observer: Observer, instance_id: str, event: str, timeout: float = 30) -> Received:
    found = observer.wait_for(
        f"{event} of {instance_id}",
        lambda: [e for e in observer.for_instance(instance_id, TOPIC) if e.data["event"] == event],
        timeout=timeout,
    )
    return found[0]


def once_each(observer: Observer, instance_id: str) -> dict[str, set[str]]:
    """Event -> distinct CloudEvent ids; fails when one change went out under two ids."""
    events = observer.by_instance(TOPIC).get(instance_id, {})
    doubled = {kind: ids for kind, ids in events.items() if len(ids) > 1}
    assert not doubled, f"{instance_id}: published under several ids: {doubled}"
    return events


def assert_observed(event: Received) -> None:
    assert event.data["observed"] is True, event.data
    assert "correlation_id" not in event.data, event.data


def start_counter(observer: Observer) -> str:
    instance_id = unique("watched")
    observer.publish(
        f"{PREFIX}workflow.start", {"workflow": "counter_workflow", "instance_id": instance_id}
    )
    started = wait_event(observer, instance_id, "started")
    assert started.data["observed"] is False
    return instance_id


def test_cli_suspend_resume_terminate_purge_each_reach_consumers_once(
    watched: Worker, observer: Observer
) -> None:
    instance_id = start_counter(observer)
    cli("suspend", instance_id, "--reason", "from the cli")
    suspended = wait_event(observer, instance_id, "suspended")
    assert_observed(suspended)
    assert (suspended.data["status"], suspended.data["previous_status"]) == (
        "SUSPENDED",
        "RUNNING",
    )
    cli("resume", instance_id)
    assert_observed(wait_event(observer, instance_id, "resumed"))
    cli("terminate", instance_id)
    terminated = wait_event(observer, instance_id, "terminated")
    assert_observed(terminated)
    assert terminated.data["status"] == "TERMINATED"
    with cli_purge(instance_id):
        purged = wait_event(observer, instance_id, "purged")
    assert_observed(purged)
    time.sleep(3)  # three more sweeps: nothing is reported again
    events = once_each(observer, instance_id)
    assert set(events) == {"started", "suspended", "resumed", "terminated", "purged"}


def test_changes_the_worker_makes_are_not_reported_again_by_the_watch(
    watched: Worker, observer: Observer
) -> None:
    instance_id = start_counter(observer)
    for action in ("suspend", "resume", "terminate", "purge"):
        observer.publish(
            f"{PREFIX}workflow.control", {"action": action, "instance_id": instance_id}
        )
        kind = {"suspend": "suspended", "resume": "resumed"}.get(action, f"{action}d")
        assert wait_event(observer, instance_id, kind).data["observed"] is False
    time.sleep(3)  # sweeps and re-checks after the changes
    events = once_each(observer, instance_id)
    assert set(events) == {"started", "suspended", "resumed", "terminated", "purged"}


def test_an_instance_started_by_the_cli_is_reported_through_completed(
    watched: Worker, observer: Observer
) -> None:
    instance_id = unique("cli-run")
    cli("run", "waiting_workflow", "--instance-id", instance_id, "--input", '"from the cli"')
    started = wait_event(observer, instance_id, "started")
    assert_observed(started)
    assert started.data["workflow"] == "waiting_workflow"
    cli("raise-event", f"{instance_id}/go", "--input", '{"approved": true}')
    raised = wait_event(observer, instance_id, "event_raised")
    assert_observed(raised)
    assert raised.data["event_name"] == "go"
    completed = wait_event(observer, instance_id, "completed")
    assert completed.data["output"] == '{"approved": true}'  # CLI 1.16.5 sends it as a string
    time.sleep(2)
    assert set(once_each(observer, instance_id)) == {"started", "event_raised", "completed"}


def test_a_rerun_is_reported_as_a_new_instance(watched: Worker, observer: Observer) -> None:
    original = unique("rerun")
    observer.publish(
        f"{PREFIX}workflow.start",
        {"workflow": "slow_workflow", "instance_id": original, "input": 0.1},
    )
    wait_event(observer, original, "completed")
    history = WorkflowGateway(10, address=f"127.0.0.1:{watched.sidecar.grpc_port}").history(
        original
    )
    [step] = [e.eventId for e in history if e.WhichOneof("eventType") == "taskScheduled"][:1]
    copy = unique("rerun-copy")
    cli("rerun", original, "--new-instance-id", copy, "--event-id", str(step))
    started = wait_event(observer, copy, "started")
    assert_observed(started)
    assert wait_event(observer, copy, "completed").data["output"] == "slow step done"


def test_a_step_in_flight_too_long_is_reported_stalled_then_unstalled(
    watched: Worker, observer: Observer
) -> None:
    instance_id = unique("slow")
    observer.publish(
        f"{PREFIX}workflow.start",
        {"workflow": "slow_workflow", "instance_id": instance_id, "input": 9},
    )
    stalled = wait_event(observer, instance_id, "stalled", timeout=30)
    assert_observed(stalled)
    assert stalled.data["step"]["kind"] == "activity"
    assert stalled.data["step"]["name"] == "slow_step"
    unstalled = wait_event(observer, instance_id, "unstalled", timeout=30)
    assert_observed(unstalled)
    wait_event(observer, instance_id, "completed")
    assert len(once_each(observer, instance_id)["stalled"]) == 1


def test_a_purge_made_while_the_watching_worker_was_down_is_published_after_it_returns(
    stack: devstack.Stack, watched: Worker, observer: Observer, backend: str
) -> None:
    """A purge needs a sidecar that hosts the workflows, i.e. a running worker: here a second
    replica with the watch turned off keeps them hosted while the watching one is down."""
    keeper = start_worker(
        stack,
        APP_ID,
        topic_prefix=PREFIX,
        env={**FAST, "WORKER_WATCH_ENABLED": "false"},
        name=f"{APP_ID}-keeper",
        profile=backend,
    )
    try:
        instance_id = unique("down")
        keeper.client.schedule_new_workflow("greeting_workflow", input="x", instance_id=instance_id)
        wait_event(observer, instance_id, "completed")
        time.sleep(2.5)  # a sweep has taken it into the inventory
        watched.proc.stop()
        keeper.client.purge_workflow(instance_id)
        time.sleep(2)
        gone = [e for e in observer.for_instance(instance_id, TOPIC) if e.data["event"] == "purged"]
        assert gone == [], "nobody watches now"
        restart_worker(stack, watched, name=f"{APP_ID}-again")
        purged = wait_event(observer, instance_id, "purged", timeout=40)
        assert_observed(purged)
        assert purged.data["previous_status"] == "COMPLETED"
    finally:
        keeper.stop()


def _retention_config(stack: devstack.Stack) -> Path:
    """The project's sidecar configuration plus daprd's own purge of finished instances."""
    text = devstack.CONFIG.read_text().rstrip() + (
        "\n  workflow:\n    stateRetentionPolicy:\n      anyTerminal: 2s\n"
    )
    path = stack.workdir / "retention-config.yaml"
    path.write_text(text)
    return path


def test_a_purge_by_the_retention_policy_is_published(
    stack: devstack.Stack, observer: Observer, backend: str
) -> None:
    app_port = devstack.free_port()
    sidecar = stack.start_sidecar(
        "retention-worker",
        stack.components(backend),
        app_port=app_port,
        config=_retention_config(stack),
        name="daprd-retention",
    )
    env: dict[str, Any] = {
        "WORKER_APP_ID": "retention-worker",
        "WORKER_WORKFLOW_MODULES": '["tests.integration.user_workflows"]',
        "PYTHONPATH": str(devstack.PROJECT),
        **FAST,
        "WORKER_STATUS_TOPIC": TOPIC,
        **{f"WORKER_{t.upper()}_TOPIC": f"retention.{t}" for t in ("start", "approval", "control")},
    }
    proc = stack.start_worker(sidecar, name="retention-worker", env=env)
    client = DaprWorkflowClient(host="127.0.0.1", port=str(sidecar.grpc_port))
    try:
        instance_id = unique("retained")
        client.schedule_new_workflow("greeting_workflow", input="r", instance_id=instance_id)
        assert_observed(wait_event(observer, instance_id, "started"))
        wait_event(observer, instance_id, "completed")
        purged = wait_event(observer, instance_id, "purged", timeout=40)
        assert_observed(purged)
        assert client.get_workflow_state(instance_id) is None
    finally:
        client.close()
        proc.stop()
        sidecar.proc.stop()


def test_killing_the_sweeping_replica_hands_the_watch_over(
    stack: devstack.Stack, watched: Worker, observer: Observer, backend: str
) -> None:
    """Two replicas; the one holding the lease is SIGKILLed with its sidecar: the other takes
    the sweep over within the lease time and misses no purge."""
    second = start_worker(
        stack, APP_ID, topic_prefix=PREFIX, env=FAST, name=f"{APP_ID}-2", profile=backend
    )
    try:
        ids = [unique("handover") for _ in range(6)]
        for instance_id in ids:
            observer.publish(
                f"{PREFIX}workflow.start",
                {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "h"},
            )
        for instance_id in ids:
            wait_event(observer, instance_id, "completed")
        time.sleep(2.5)  # swept into the inventory
        sweeping = _sweeper(watched, second)
        survivor = second if sweeping is watched else watched
        sweeping.proc.kill()
        sweeping.sidecar.proc.kill()
        for instance_id in ids:
            _purge_through_fail_over(survivor, instance_id)
        for instance_id in ids:
            assert_observed(wait_event(observer, instance_id, "purged", timeout=60))
            once_each(observer, instance_id)
    finally:
        second.stop()


def _purge_through_fail_over(worker: Worker, instance_id: str, timeout: float = 60) -> None:
    """Purge as a client would right after a replica's crash: until placement has dropped the
    dead sidecar, daprd may still route the instance's actor to it and answer UNAVAILABLE
    (seen on postgres-kafka: "failed to invoke target ... connection refused"); retry that
    until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            worker.client.purge_workflow(instance_id)
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _sweeper(*replicas: Worker) -> Worker:
    """The replica that holds the sweeping lease (read from the state store)."""
    key = urllib.parse.quote("wfw|watch|lease", safe="")
    url = f"http://127.0.0.1:{replicas[0].sidecar.http_port}/v1.0/state/statestore/{key}"
    with urllib.request.urlopen(url, timeout=10) as response:
        holder = json.loads(response.read())["holder"]
    for worker in replicas:
        if f"replica {holder}" in worker.proc.log.read_text(errors="replace"):
            return worker
    raise AssertionError(f"no replica logged that it holds the lease ({holder})")
