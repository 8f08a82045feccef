"""wfctl on the embedded default (in-memory pub/sub inside the worker's own sidecar), as the
README shows it: many commands in a row and several at once on that one sidecar, each with
the exit code it should have, and no streaming subscription left behind.

daprd 1.18.2 retries a delivery that a closed stream left unanswered (under the project's
resiliency policy, for up to 15 minutes), and in-memory pub/sub unsubscribes the oldest stream
of a topic instead of the closed one: these tests fail when wfctl leaves either behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scripts import devstack
from tests.integration.conftest import Worker, start_worker, unique
from tests.integration.test_cli import WFCTL, env_for, last_json, wfctl

ORDER = '{"order_id": "o1", "amount": 2500}'
# What daprd logs when a delivery to a closed stream is left unanswered and retried.
STRANDED = ("no streamer subscribed", "err: stream closed")


@pytest.fixture(scope="module")
def embedded(stack: devstack.Stack) -> Iterator[Worker]:
    running = start_worker(stack, "wfctl-embedded-worker", profile="default")
    yield running
    running.stop()


def streams(worker: Worker) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{worker.sidecar.http_port}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as response:
        meta = json.load(response)
    return [s for s in meta.get("subscriptions") or [] if s.get("type") == "STREAMING"]


def ok(worker: Worker, *args: str, event: str | None = None) -> dict[str, Any]:
    """Run wfctl on the worker's sidecar; it must exit 0 (with ``event`` when given)."""
    result = wfctl(worker.sidecar, *args)
    assert result.returncode == 0, f"wfctl {' '.join(args)}: {result.returncode} {result.stderr}"
    printed = last_json(result)
    if event is not None:
        assert printed["event"] == event, printed
    return printed


def no_stream_left(worker: Worker) -> None:
    devstack.wait_until(lambda: not streams(worker), 20, "no streaming subscription left")
    log = worker.sidecar.proc.log.read_text(errors="replace")
    assert not [line for line in log.splitlines() if any(s in line for s in STRANDED)]


def approval_round(worker: Worker) -> None:
    instance_id = unique("order")
    ok(worker, "start", "approval_workflow", "--id", instance_id, "--input", ORDER, "--wait",
       "--until", "started", event="started")  # fmt: skip
    done = ok(worker, "approve", instance_id, "--by", "ana", "--wait", "--until", "finished")
    assert done["event"] == "completed", done
    state = ok(worker, "query", instance_id, event="state")
    assert state["status"] == "COMPLETED", state


def control_round(worker: Worker) -> None:
    instance_id = unique("counter")
    ok(worker, "start", "counter_workflow", "--id", instance_id, "--wait", "--until", "started")
    ok(worker, "suspend", instance_id, "--wait", event="suspended")
    ok(worker, "resume", instance_id, "--wait", event="resumed")
    ok(worker, "terminate", instance_id, "--wait", event="terminated")
    ok(worker, "history", instance_id, event="history")
    ok(worker, "purge", instance_id, "--wait", event="purged")


def test_many_commands_in_a_row(embedded: Worker) -> None:
    """The issue's two rounds failed on the second; here three of each, mixed."""
    for _ in range(3):
        approval_round(embedded)
        control_round(embedded)
        greeted = ok(embedded, "start", "greeting_workflow", "--input", '"row"', "--wait")
        assert greeted["output"] == "hello, row"
    no_stream_left(embedded)


def greet(worker: Worker, name: str) -> dict[str, Any]:
    return ok(worker, "start", "greeting_workflow", "--id", name, "--input", '"x"', "--wait")


def test_commands_at_once_beside_a_watch(embedded: Worker) -> None:
    """A watch runs throughout (the oldest stream) while commands run four at a time: every
    command exits 0, and the watch, never deafened by their streams closing, prints the
    start and end of every instance they started."""
    watch = subprocess.Popen(
        [str(WFCTL), "watch", "--workflow", "greeting_workflow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env_for(embedded.sidecar)},
    )
    names = [unique("together") for _ in range(8)]
    try:
        devstack.wait_until(
            lambda: len(streams(embedded)) == 1,
            30,
            "the watch's stream",
            lambda: watch.poll() is None,
        )
        with ThreadPoolExecutor(max_workers=4) as pool:
            greeted = list(pool.map(lambda name: greet(embedded, name), names))
            rounds = [pool.submit(approval_round, embedded), pool.submit(control_round, embedded)]
            for future in rounds:
                future.result()
        assert [g["event"] for g in greeted] == ["completed"] * len(names)
        devstack.wait_until(lambda: len(streams(embedded)) == 1, 30, "only the watch's stream")
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    seen = [json.loads(line) for line in out.splitlines()]
    for name in names:
        assert [e["event"] for e in seen if e["instance_id"] == name] == ["started", "completed"]
    no_stream_left(embedded)
