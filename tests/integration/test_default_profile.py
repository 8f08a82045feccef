"""The embedded default (SQLite state, in-memory pub/sub): no server besides Dapr's own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from scripts import devstack
from tests.integration.conftest import Worker, publish_plain, restart_worker, start_worker, unique


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


def test_messages_accepted_ahead_survive_a_worker_crash(stack: devstack.Stack) -> None:
    """The in-memory pub/sub hands the worker one message at a time, so the worker answers
    each once it is in its journal (in the sidecar's memory) and starts it after. Killed with
    messages accepted and not yet run, the worker runs them when it comes back: none is lost
    for having been answered early.

    The starts are delayed (``start_at``) past the restart, so no workflow runs in the process
    that is killed: daprd 1.18.2 can wedge when the process hosting the workflows dies while a
    run is being handed to it (README, "What is guaranteed"), which is not what this tests. A
    start the kill cut short after its instance was made stays undecided until that instance
    runs and shows whose it is."""
    # One lane and four journal slots: the lane cannot keep up with the deliveries, so the
    # journal is full of accepted messages when the worker is killed.
    crashing = start_worker(
        stack, "crash-worker", profile="default", env={"WORKER_MAX_CONCURRENCY": "1"}
    )
    later = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    try:
        ids = [unique("ahead") for _ in range(40)]
        for instance_id in ids:
            publish_plain(
                crashing.sidecar,
                "workflow.start",
                {"workflow": "greeting_workflow", "instance_id": instance_id, "start_at": later},
            )
        crashing.proc.kill()  # at once: the journal holds messages accepted and not yet run
        restart_worker(stack, crashing, "crash-worker-2")
        for instance_id in ids:  # created, each of them
            crashing.wait_status(instance_id, {"PENDING", "RUNNING", "COMPLETED"}, timeout=60)
        log = crashing.proc.log.read_text(errors="replace")
        assert "recovering" in log, "the restarted worker found nothing in its journal"
    finally:
        crashing.stop()
