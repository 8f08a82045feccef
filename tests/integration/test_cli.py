"""wfctl, the command-line client, end to end on the shared profile: the installed console
script run as a subprocess, as a pipeline runs it, against the session's worker.

Each wfctl gets a sidecar with app-id workflow-client and components/client (a consumer group
of its own), never the observer's: a second reader in the observer's group would take events
away from it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker, start_worker, unique

WFCTL = Path(sys.executable).with_name("wfctl")


def client_sidecar(
    stack: devstack.Stack, name: str, *, app_id: str = "workflow-client", profile: str = "client"
) -> devstack.Sidecar:
    """A sidecar with no app (wfctl needs no app port), as `dapr run --app-id ... ` without a
    command starts one."""
    grpc_port, http_port = devstack.free_port(), devstack.free_port()
    resources = stack.components(profile) if profile else _empty(stack)
    proc = stack._spawn(
        name,
        [
            str(devstack.dapr_bin("daprd")),
            "--app-id",
            app_id,
            "--dapr-grpc-port",
            str(grpc_port),
            "--dapr-http-port",
            str(http_port),
            "--dapr-internal-grpc-port",
            str(devstack.free_port()),
            "--metrics-port",
            str(devstack.free_port()),
            "--enable-metrics=false",
            "--placement-host-address",
            f"127.0.0.1:{stack.placement_port}",
            "--scheduler-host-address",
            f"127.0.0.1:{stack.scheduler_port}",
            "--resources-path",
            str(resources),
            "--config",
            str(devstack.CONFIG),
            "--log-level",
            "info",
        ],
        ports={"grpc": grpc_port, "http": http_port},
    )
    healthz = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"
    stack._ready(proc, lambda: devstack.http_ok(healthz), 60)
    return devstack.Sidecar(app_id, proc, grpc_port, http_port, 0)


def _empty(stack: devstack.Stack) -> Path:
    empty = stack.workdir / "components-empty"
    empty.mkdir(exist_ok=True)
    return empty


def env_for(sidecar: devstack.Sidecar) -> dict[str, str]:
    return {"DAPR_GRPC_PORT": str(sidecar.grpc_port), "DAPR_HTTP_PORT": str(sidecar.http_port)}


def wfctl(
    sidecar: devstack.Sidecar | None, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a pipeline would (no terminal)."""
    run_env = {**os.environ, **(env_for(sidecar) if sidecar else {}), **env}
    return subprocess.run(
        [str(WFCTL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=run_env,
    )


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout is not one JSON line: {result.stdout!r} / {result.stderr}"
    value: dict[str, Any] = json.loads(lines[0])
    return value


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {result.stderr!r}"
    return lines[0]


@pytest.fixture(scope="module")
def client(stack: devstack.Stack, worker: Worker, observer: Observer) -> Iterator[devstack.Sidecar]:
    """wfctl's sidecar for this module (the worker and the observer run too)."""
    sidecar = client_sidecar(stack, "daprd-wfctl")
    yield sidecar
    sidecar.proc.stop()


def test_the_console_script_is_installed_with_help_for_every_command() -> None:
    assert WFCTL.exists(), f"{WFCTL} missing: run scripts/setup.sh"
    top = wfctl(None, "--help")
    assert top.returncode == 0 and "Exit codes:" in top.stdout
    for command in (
        "start",
        "approve",
        "reject",
        "raise",
        "suspend",
        "resume",
        "terminate",
        "purge",
        "query",
        "history",
        "watch",
    ):
        result = wfctl(None, command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Examples:" in result.stdout, command


def test_start_wait_exits_0_with_the_completed_event(
    client: devstack.Sidecar, observer: Observer
) -> None:
    result = wfctl(client, "start", "greeting_workflow", "--input", '"pipeline"', "--wait")
    assert result.returncode == 0, result.stderr
    event = last_json(result)
    assert event["event"] == "completed" and event["output"] == "hello, pipeline"
    assert result.stderr == ""
    # What the worker published reached its other consumers too (nothing taken from them).
    instance_id = event["instance_id"]
    observer.wait_for(
        "the observer's completed",
        lambda: [e for e in observer.for_instance(instance_id) if e.data["event"] == "completed"],
    )


def test_start_wait_of_a_failing_workflow_exits_3_with_its_failure(
    client: devstack.Sidecar,
) -> None:
    instance_id = unique("fails")
    result = wfctl(
        client, "start", "failing_workflow", "--id", instance_id, "--input", '"kaboom"', "--wait"
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert last_json(result)["event"] == "failed"
    assert one_line(result) == f"wfctl: {instance_id} failed: RuntimeError: kaboom"


def test_a_start_the_worker_rejects_exits_5_with_the_reason(client: devstack.Sidecar) -> None:
    result = wfctl(client, "start", "no_such_workflow", "--wait")
    assert result.returncode == 5, result.stdout + result.stderr
    assert (last_json(result)["event"], last_json(result)["code"]) == (
        "rejected",
        "unknown_workflow",
    )
    line = one_line(result)
    assert line.startswith(
        "wfctl: rejected (unknown_workflow): workflow 'no_such_workflow' is not allowed here"
    )
    assert "greeting_workflow" in line  # the reason lists what may be started


def test_approve_wait_and_reject_until_finished(client: devstack.Sidecar) -> None:
    approved, rejected = unique("order"), unique("order")
    for instance_id in (approved, rejected):
        order = {"order_id": instance_id, "amount": 5000, "approval_timeout_seconds": 300}
        started = wfctl(
            client,
            "start",
            "approval_workflow",
            "--id",
            instance_id,
            "--input",
            json.dumps(order),
            "--wait",
            "--until",
            "started",
        )
        assert started.returncode == 0, started.stderr
        assert last_json(started)["event"] == "started"

    result = wfctl(client, "approve", approved, "--by", "ci", "--wait")
    assert result.returncode == 0, result.stderr
    event = last_json(result)
    assert (event["event"], event["instance_id"]) == ("event_raised", approved)
    assert event["event_name"] == "approval_decision"

    result = wfctl(
        client, "reject", rejected, "--by", "ci", "--reason", "no", "--wait", "--until", "finished"
    )
    assert result.returncode == 0, result.stderr
    event = last_json(result)
    assert event["event"] == "completed" and event["output"]["status"] == "rejected", event
    assert event["output"]["decision"] == {"approved": False, "approver": "ci", "reason": "no"}


def test_timeout_exits_6_and_the_work_goes_on(client: devstack.Sidecar) -> None:
    instance_id = unique("waits")
    began = time.monotonic()
    result = wfctl(
        client, "start", "waiting_workflow", "--id", instance_id, "--wait", "--timeout", "4"
    )
    took = time.monotonic() - began
    assert result.returncode == 6, result.stdout + result.stderr
    assert result.stdout == ""
    line = one_line(result)
    assert line.startswith("wfctl: timed out after 4s waiting for the start of waiting_workflow")
    assert "last seen: started, RUNNING" in line
    assert 4 <= took < 20, took
    # It was only the wait that ended: the instance still waits for its event.
    done = wfctl(
        client, "raise", instance_id, "go", "--data", '{"ok": 1}', "--wait", "--until", "finished"
    )
    assert done.returncode == 0, done.stderr
    assert last_json(done)["output"] == {"ok": 1}


def test_watch_with_a_filter_sees_exactly_the_events_of_its_instance(
    stack: devstack.Stack, client: devstack.Sidecar, observer: Observer
) -> None:
    watcher = client_sidecar(stack, "daprd-wfctl-watch")
    try:
        mine, other = unique("watched"), unique("unwatched")
        proc = subprocess.Popen(
            [str(WFCTL), "watch", "--instance", mine],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env_for(watcher)},
        )
        try:
            devstack.wait_until(
                lambda: _streaming(watcher),
                30,
                "the watch's subscription",
                lambda: proc.poll() is None,
            )
            for instance_id in (other, mine, other + "-2"):
                published = wfctl(
                    client, "start", "greeting_workflow", "--id", instance_id, "--input", '"w"'
                )
                assert published.returncode == 0, published.stderr
            wanted = observer.wait_for(
                "started and completed of the watched instance",
                lambda: observer.for_instance(mine),
                count=2,
            )
            time.sleep(3)  # anything else would have come by now
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl+C: a watch ends with 0
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [e["instance_id"] for e in lines] == [mine, mine], lines
        assert sorted(e["event"] for e in lines) == ["completed", "started"]
        assert sorted(e["event"] for e in lines) == sorted(r.data["event"] for r in wanted)
        assert {json.dumps(e, sort_keys=True) for e in lines} == {
            json.dumps(r.data, sort_keys=True) for r in wanted
        }
    finally:
        watcher.proc.stop()


def test_a_watch_right_after_another_wfctl_on_its_sidecar_shows_each_instance_in_order(
    stack: devstack.Stack, client: devstack.Sidecar, observer: Observer
) -> None:
    """The read a closed stream leaves blocked on Redis (daprd 1.18.2) takes the next status
    event, which is reclaimed seconds later: `completed` came before `started` in 3 of 4 runs
    of this sequence. Several rounds, each on the sidecar the previous wfctl just left."""
    shared = client_sidecar(stack, "daprd-wfctl-sequence")
    try:
        for round_ in range(3):
            before = wfctl(shared, "start", "greeting_workflow", "--input", '"x"', "--wait")
            assert before.returncode == 0, before.stderr
            mine = unique(f"ordered-{round_}")
            proc = subprocess.Popen(
                [str(WFCTL), "watch", "--instance", mine, "--max-events", "2"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env_for(shared)},
            )
            try:
                devstack.wait_until(
                    lambda: _streaming(shared), 30, "the watch's subscription", lambda: True
                )
                started = wfctl(
                    client, "start", "greeting_workflow", "--id", mine, "--input", '"o"'
                )
                assert started.returncode == 0, started.stderr
                out, err = proc.communicate(timeout=60)
            finally:
                proc.kill()
            assert proc.returncode == 0, err
            shown = [json.loads(line)["event"] for line in out.splitlines()]
            assert shown == ["started", "completed"], (round_, shown)
    finally:
        shared.proc.stop()


def _streaming(sidecar: devstack.Sidecar) -> bool:
    url = f"http://127.0.0.1:{sidecar.http_port}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as response:
        meta = json.load(response)
    return any(s.get("type") == "STREAMING" for s in meta.get("subscriptions") or [])


def test_control_commands_wait_for_their_outcome(client: devstack.Sidecar) -> None:
    instance_id = unique("counter")
    started = wfctl(
        client, "start", "counter_workflow", "--id", instance_id, "--wait", "--until", "started"
    )
    assert started.returncode == 0, started.stderr
    for command, event in (("suspend", "suspended"), ("resume", "resumed")):
        result = wfctl(client, command, instance_id, "--reason", "cli test", "--wait")
        assert result.returncode == 0, result.stderr
        assert last_json(result)["event"] == event
    state = wfctl(client, "query", instance_id)
    assert state.returncode == 0, state.stderr
    assert (last_json(state)["event"], last_json(state)["status"]) == ("state", "RUNNING")
    result = wfctl(client, "terminate", instance_id, "--reason", "done", "--wait")
    assert result.returncode == 0, result.stderr  # the action done: not 4
    assert last_json(result)["event"] == "terminated"
    timeline = wfctl(client, "history", instance_id)
    assert timeline.returncode == 0, timeline.stderr
    assert last_json(timeline)["event"] == "history"
    result = wfctl(client, "purge", instance_id, "--wait")
    assert result.returncode == 0, result.stderr
    assert last_json(result)["event"] == "purged"
    again = wfctl(client, "suspend", instance_id, "--wait", "--timeout", "60")
    assert again.returncode == 5, again.stdout + again.stderr  # unknown once purged
    assert last_json(again)["code"] == "purged"  # the worker noted its own purge
    assert one_line(again).startswith(f"wfctl: rejected (purged): unknown instance {instance_id}")


def test_without_wait_it_prints_what_it_published(
    client: devstack.Sidecar, observer: Observer
) -> None:
    result = wfctl(
        client, "start", "greeting_workflow", "--input", '"fire"', "--source", "ci/job-1"
    )
    assert result.returncode == 0, result.stderr
    published = last_json(result)
    assert published["topic"] == "workflow.start" and published["source"] == "ci/job-1"
    [started] = observer.wait_for(
        "started",
        lambda: [
            e for e in observer.for_message(published["message_id"]) if e.data["event"] == "started"
        ],
    )
    assert started.data["instance_id"] == published["instance_id"]


# -- errors: one line, what to do, a distinct exit code, no hang -------------------------


def test_invalid_json_input_is_a_usage_error_and_nothing_is_published() -> None:
    dead = str(devstack.free_port())
    result = wfctl(None, "start", "greeting_workflow", "--input", "{oops", DAPR_HTTP_PORT=dead)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--input: the value is not valid JSON" in one_line(result)
    bad_id = wfctl(None, "approve", "has space", DAPR_HTTP_PORT=dead)
    assert bad_id.returncode == 2
    assert "the worker would reject this message: instance_id" in one_line(bad_id)


def test_no_sidecar_is_exit_7_within_the_connect_timeout() -> None:
    dead = str(devstack.free_port())
    began = time.monotonic()
    result = wfctl(
        None,
        "start",
        "greeting_workflow",
        "--wait",
        "--connect-timeout",
        "2",
        DAPR_HTTP_PORT=dead,
        DAPR_GRPC_PORT=str(devstack.free_port()),
    )
    assert result.returncode == 7, result.stderr
    assert time.monotonic() - began < 15
    line = one_line(result)
    assert f"no healthy Dapr sidecar at http://127.0.0.1:{dead} after 2s" in line
    assert "dapr run --app-id workflow-client" in line


def test_a_sidecar_without_the_pubsub_component_is_exit_7(stack: devstack.Stack) -> None:
    bare = client_sidecar(stack, "daprd-wfctl-bare", profile="")
    try:
        result = wfctl(bare, "start", "greeting_workflow", "--wait")
        assert result.returncode == 7, result.stderr
        assert "has no pub/sub component 'pubsub'" in one_line(result)
    finally:
        bare.proc.stop()


def test_scoping_refusals_are_exit_8(stack: devstack.Stack, worker: Worker) -> None:
    """An app-id the shared profile does not grant: its sidecar refuses the publish, and the
    subscription to the status topic."""
    outsider = client_sidecar(stack, "daprd-wfctl-outsider", app_id="not-granted")
    try:
        published = wfctl(outsider, "start", "greeting_workflow")
        assert published.returncode == 8, published.stderr
        line = one_line(published)
        assert "the broker refused the publish to workflow.start" in line
        assert "publishingScopes" in line
        waited = wfctl(outsider, "query", "anything")
        assert waited.returncode == 8, waited.stderr
        assert "app-id 'not-granted' may not subscribe to workflow.status" in one_line(waited)
    finally:
        outsider.proc.stop()


def test_a_second_subscriber_on_the_same_sidecar_is_refused(client: devstack.Sidecar) -> None:
    watch = subprocess.Popen(
        [str(WFCTL), "watch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env_for(client)},
    )
    try:
        devstack.wait_until(lambda: _streaming(client), 30, "the watch's subscription")
        result = wfctl(client, "query", "anything")
        assert result.returncode == 7, result.stderr
        assert "already subscribes to workflow.status (STREAMING)" in one_line(result)
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.communicate(timeout=30)
    assert watch.returncode == 0


def test_the_documented_dapr_run_form(stack: devstack.Stack, worker: Worker) -> None:
    """`dapr run --app-id workflow-client --resources-path components/client -- wfctl ...`:
    the CLI starts a sidecar for the one command. dapr run passes only success (0) or
    failure (1) on, so pipelines that branch on codes run the sidecar apart (docs/operate/wfctl.md).
    """
    dapr = str(devstack.dapr_bin("dapr"))

    def dapr_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                dapr,
                "run",
                "--app-id",
                "workflow-client",
                "--resources-path",
                str(stack.components("client")),
                "--config",
                str(devstack.CONFIG),
                "--placement-host-address",
                f"127.0.0.1:{stack.placement_port}",
                "--scheduler-host-address",
                f"127.0.0.1:{stack.scheduler_port}",
                "--dapr-http-port",
                str(devstack.free_port()),
                "--dapr-grpc-port",
                str(devstack.free_port()),
                "--",
                str(WFCTL),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    ok = dapr_run("start", "greeting_workflow", "--input", '"dapr run"', "--wait")
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert '"output": "hello, dapr run"' in ok.stdout
    failed = dapr_run("start", "failing_workflow", "--input", '"x"', "--wait")
    assert failed.returncode == 1, failed.stdout[-3000:]
    assert "failed: RuntimeError: x" in failed.stdout


def test_in_the_embedded_default_it_talks_to_the_workers_own_sidecar(
    stack: devstack.Stack,
) -> None:
    """In-memory pub/sub lives inside the worker's sidecar: wfctl uses that sidecar (every
    subscription there gets every message, so nothing is split)."""
    running = start_worker(stack, "wfctl-default-worker", profile="default")
    try:
        result = wfctl(running.sidecar, "start", "greeting_workflow", "--input", '"mem"', "--wait")
        assert result.returncode == 0, result.stderr
        assert last_json(result)["output"] == "hello, mem"
        # Another sidecar's in-memory pub/sub reaches no worker: said at once, not a timeout.
        lonely = client_sidecar(stack, "daprd-wfctl-lonely", profile="default")
        try:
            lost = wfctl(lonely, "start", "greeting_workflow", "--wait")
            assert lost.returncode == 7, lost.stderr
            assert "is in-memory and nothing in that sidecar subscribes" in one_line(lost)
        finally:
            lonely.proc.stop()
    finally:
        running.stop()
