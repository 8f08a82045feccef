"""The Dapr CLI against the worker on the shared profile, as an operator would use it."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker, unique


def test_dapr_workflow_list_sees_the_worker_on_redis(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    """CLI 1.16.5 reads the instance list from the actor state store itself: on Redis its
    ``-c`` is a Redis URL. Runs the tutorial's command (docs/getting-started/tutorial.md),
    with the stack's Redis port."""
    page = (devstack.PROJECT / "docs" / "getting-started" / "tutorial.md").read_text()
    documented = re.search(r"^dapr workflow list -a workflow-worker -c redis://\S+", page, re.M)
    assert documented, "the tutorial shows no `dapr workflow list` for the shared profile"
    command = shlex.split(documented[0].replace("localhost:6379", f"127.0.0.1:{stack.redis_port}"))
    instance_id = unique("listed")
    observer.publish(
        "workflow.start",
        {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "cli"},
    )
    worker.wait_status(instance_id, {"COMPLETED"})
    result = subprocess.run(
        [str(devstack.dapr_bin("dapr")), *command[1:], "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    others = [
        pid for pid in _sidecars_of(worker.sidecar.app_id) if pid != worker.sidecar.proc.popen.pid
    ]
    if result.returncode != 0 and others:  # the CLI takes the first daprd with that app-id
        pytest.skip(f"the CLI failed; other {worker.sidecar.app_id} sidecars run here: {others}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert instance_id in result.stdout


def _sidecars_of(app_id: str) -> list[int]:
    """Pids of the daprd processes on this machine that run ``app_id``."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # not a process, or gone
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if (
                Path(cmdline.split("\0")[0]).name == "daprd"
                and f"\0--app-id\0{app_id}\0" in cmdline
            ):
                pids.append(int(entry.name))
    return pids
