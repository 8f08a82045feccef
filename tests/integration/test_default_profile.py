"""The embedded default (SQLite state, in-memory pub/sub): no server besides Dapr's own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from scripts import devstack
from tests.integration.conftest import Worker, publish_plain, start_worker, unique


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
