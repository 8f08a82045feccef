"""The console's HTTP API end to end: a real worker, sidecar and broker; what it answers, and
what the status topic and the audit log show for it."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Observer, unique
from tests.integration.console.conftest import ConsoleWorker

pytestmark = pytest.mark.integration


def key() -> str:
    return f"it-{uuid.uuid4().hex}"


def on_topic(observer: Observer, event_id: str) -> dict[str, Any]:
    """The status event with CloudEvent id ``event_id`` as a consumer of the topic got it."""
    found = observer.wait_for(
        f"status event {event_id}",
        lambda: [r for r in observer.events("console.workflow.status") if r.id == event_id],
    )
    return found[0].data


def test_start_list_filter_and_history(console: ConsoleWorker, observer: Observer) -> None:
    done, waiting = unique("api-greet"), unique("api-wait")
    result = console.start("greeting_workflow", done, "ana")
    assert result["outcome"] == "done" and result["instance_id"] == done
    started = result["events"][0]
    assert started["data"]["event"] == "started"
    assert on_topic(observer, started["id"])["correlation_id"] == result["message_id"]
    console.start("waiting_workflow", waiting)
    console.wait_listed(done, "COMPLETED")
    console.wait_listed(waiting, "RUNNING")

    narrowed = console.viewer.get(
        "/api/instances", params={"workflow": "waiting_workflow", "q": "api-"}
    ).json()
    assert {i["workflow"] for i in narrowed["items"]} == {"waiting_workflow"}
    assert waiting in {i["instance_id"] for i in narrowed["items"]}
    assert narrowed["counts"]["RUNNING"] >= 1

    detail = console.viewer.get(f"/api/instances/{done}").json()
    assert (detail["status"], detail["input"], detail["output"]) == (
        "COMPLETED",
        "ana",
        "hello, ana",
    )
    assert [e["data"]["event"] for e in detail["events"]][:1] == ["started"]
    history = console.viewer.get(f"/api/instances/{done}/history").json()
    kinds = [t["kind"] for t in history["timeline"]]
    assert kinds[0] == "run" and "report" in kinds
    assert history["timeline"][0]["outcome"] == "completed"


def test_a_start_by_message_is_listed_without_asking_the_sidecar_per_view(
    console: ConsoleWorker, observer: Observer
) -> None:
    instance_id = unique("msg-start")
    observer.publish(
        console.topic("start"), {"workflow": "waiting_workflow", "instance_id": instance_id}
    )
    console.wait_listed(instance_id, "RUNNING", timeout=30)


def test_suspend_resume_raise_terminate_purge_and_idempotency(
    console: ConsoleWorker, observer: Observer
) -> None:
    instance_id = unique("api-ctl")
    console.start("waiting_workflow", instance_id)
    console.wait_listed(instance_id, "RUNNING")
    same = {"Idempotency-Key": key()}
    first = console.operator.post(
        f"/api/instances/{instance_id}/suspend", json={"reason": "peak hours"}, headers=same
    )
    assert first.status_code == 200, first.text
    event = first.json()["events"][0]
    assert (event["data"]["event"], event["data"]["reason"]) == ("suspended", "peak hours")
    published = on_topic(observer, event["id"])
    assert (
        published["status"] == "SUSPENDED"
        and published["correlation_id"] == same["Idempotency-Key"]
    )
    again = console.operator.post(
        f"/api/instances/{instance_id}/suspend", json={"reason": "peak hours"}, headers=same
    )
    assert again.status_code == 200 and again.json()["events"] == first.json()["events"]
    console.wait_listed(instance_id, "SUSPENDED")
    console.worker.wait_status(instance_id, {"SUSPENDED"})

    resumed = console.operator.post(f"/api/instances/{instance_id}/resume", json={})
    assert resumed.json()["events"][0]["data"]["event"] == "resumed"
    raised = console.operator.post(
        f"/api/instances/{instance_id}/events", json={"event_name": "go", "data": {"n": 1}}
    )
    assert raised.status_code == 200 and raised.json()["events"][0]["data"]["event_name"] == "go"
    console.worker.wait_status(instance_id, {"COMPLETED"})
    console.wait_listed(instance_id, "COMPLETED")
    purged = console.operator.post(f"/api/instances/{instance_id}/purge")
    assert purged.status_code == 200 and purged.json()["events"][0]["data"]["event"] == "purged"
    assert console.viewer.get(f"/api/instances/{instance_id}").status_code == 404

    log = console.log()
    audit = [
        json.loads(line.split("worker.audit: ", 1)[1])
        for line in log.splitlines()
        if "worker.audit: " in line and instance_id in line
    ]
    assert {a["source"] for a in audit} == {"console:ana"}
    assert {a["event"] for a in audit} >= {"started", "suspended", "resumed", "purged"}


def test_terminate_with_a_reason(console: ConsoleWorker, observer: Observer) -> None:
    instance_id = unique("api-term")
    console.start("waiting_workflow", instance_id)
    answer = console.operator.post(
        f"/api/instances/{instance_id}/terminate", json={"reason": "stuck"}
    )
    assert answer.status_code == 200, answer.text
    published = on_topic(observer, answer.json()["events"][0]["id"])
    assert (published["event"], published["reason"]) == ("terminated", "stuck")
    console.worker.wait_status(instance_id, {"TERMINATED"})


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "reason"),
    [
        (
            "/api/instances",
            {"workflow": "no_such_workflow"},
            422,
            "unknown_workflow",
            "not allowed",
        ),
        ("/api/instances", b"{not json", 422, "invalid_message", "not valid JSON"),
        (
            "/api/instances",
            {"workflow": "waiting_workflow", "inptu": 1},
            422,
            "invalid_message",
            "inptu",
        ),
        ("/api/instances/never-started-x/suspend", {}, 404, "unknown_instance", "unknown instance"),
        (
            "/api/instances/never-started-x/events",
            {"data": True},
            404,
            "unknown_instance",
            "unknown instance",
        ),
        ("/api/instances/{finished}/suspend", {}, 409, "state_forbids", "COMPLETED"),
        ("/api/instances/{finished}/terminate", {}, 409, "state_forbids", "already finished"),
        (
            "/api/instances/{finished}/events",
            {"data": True},
            409,
            "state_forbids",
            "already finished",
        ),
        ("/api/instances/{running}/resume", {}, 409, "state_forbids", "only a suspended"),
        ("/api/instances/{running}/purge", {}, 409, "state_forbids", "only a finished"),
        ("/api/purge", {"statuses": ["RUNNING"]}, 422, "invalid_message", "statuses"),
    ],
)
def test_every_rejection_is_a_4xx_with_its_code_reason_and_a_rejected_event(
    console: ConsoleWorker,
    observer: Observer,
    finished_and_running: tuple[str, str],
    path: str,
    body: Any,
    status: int,
    code: str,
    reason: str,
) -> None:
    finished, running = finished_and_running
    path = path.format(finished=finished, running=running)
    message_id = key()
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    answer = console.operator.post(path, headers={"Idempotency-Key": message_id}, **kwargs)
    assert answer.status_code == status, answer.text
    result = answer.json()
    assert result["outcome"] == "rejected" and reason in result["reason"], result
    assert result["code"] == code, result
    published = on_topic(observer, result["events"][0]["id"])
    assert (published["event"], published["correlation_id"]) == ("rejected", message_id)
    assert published["code"] == code
    assert console.worker.wait_status(running, {"RUNNING"})  # nothing half-done
    assert console.worker.wait_status(finished, {"COMPLETED"})


@pytest.fixture(scope="module")
def finished_and_running(console: ConsoleWorker) -> tuple[str, str]:
    finished, running = unique("rej-done"), unique("rej-run")
    console.start("greeting_workflow", finished, "x")
    console.start("waiting_workflow", running)
    console.worker.wait_status(finished, {"COMPLETED"})
    console.worker.wait_status(running, {"RUNNING"})
    return finished, running


def test_refusals_before_the_line(console: ConsoleWorker) -> None:
    assert console.anonymous.get("/api/instances").status_code == 401
    wrong = {"Authorization": "Bearer not-a-token"}
    assert console.anonymous.post("/api/instances", json={}, headers=wrong).status_code == 401
    viewer = console.viewer.post("/api/instances", json={"workflow": "waiting_workflow"})
    assert viewer.status_code == 403 and "viewer" in viewer.json()["detail"]
    bad_key = console.operator.post(
        "/api/instances", json={"workflow": "waiting_workflow"}, headers={"Idempotency-Key": "a b"}
    )
    assert bad_key.status_code == 400
    listed = console.viewer.get("/api/instances", params={"older_than": "yesterday"})
    assert listed.status_code == 422
    assert "viewer" in console.log()  # the refusal is in the audit log


def test_bulk_purge_removes_only_what_it_should(console: ConsoleWorker) -> None:
    prefix = f"bulk-{uuid.uuid4().hex[:6]}"
    done, running, other = console.purge_candidates(prefix)
    body = {"action": "purge", "filter": {"q": f"{prefix}-"}}
    preview = console.operator.post("/api/bulk", params={"dry_run": "true"}, json=body)
    assert sorted(preview.json()["instance_ids"]) == sorted(done)
    job = console.operator.post("/api/bulk", json=body).json()
    deadline = time.monotonic() + 60
    while job["state"] != "finished" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = console.viewer.get(f"/api/jobs/{job['job_id']}").json()
    assert job["summary"] == {"done": 3}, job
    for instance_id in done:
        assert console.worker.client.get_workflow_state(instance_id) is None
    assert console.worker.client.get_workflow_state(running) is not None
    assert console.worker.client.get_workflow_state(other) is not None

    # the worker's own bulk purge message: every finished instance matching its filters
    summary = console.operator.post("/api/purge", json={"statuses": ["COMPLETED"]}).json()
    assert summary["outcome"] == "done" and summary["events"][-1]["data"]["count"] >= 1
    assert console.worker.client.get_workflow_state(other) is None
    assert console.worker.client.get_workflow_state(running) is not None


def test_server_sent_events_carry_status_events(console: ConsoleWorker) -> None:
    instance_id = unique("sse")
    with httpx.Client(base_url=console.url, timeout=30) as streaming:
        headers = {"Authorization": console.viewer.headers["Authorization"]}
        with streaming.stream("GET", "/api/events", headers=headers) as stream:
            console.start("greeting_workflow", instance_id, "x")
            deadline = time.monotonic() + 30
            for line in stream.iter_lines():
                if line.startswith("data:") and instance_id in line:
                    data = json.loads(line[5:])
                    assert data["data"]["instance_id"] == instance_id
                    break
                assert time.monotonic() < deadline, "no status event streamed"
