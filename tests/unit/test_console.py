"""The console against fakes: read model, auth, API outcomes and rejections, pages, bulk jobs."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.console_support import OPERATOR_TOKEN, VIEWER_TOKEN, Rig, rig, state
from worker.config import ConsoleUser
from worker.console.actions import REJECTION_STATUS
from worker.console.auth import Authenticator, digest
from worker.console.model import Filter, InstanceIndex
from worker.events import EventType, RejectCode, StatusEvent, stable_event_id
from worker.outcomes import Rejected
from worker.publisher import Outbound

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def outbound(event: EventType, instance_id: str, status: str | None, at: datetime) -> Outbound:
    data = StatusEvent(event=event, instance_id=instance_id, status=status, occurred_at=at)
    return Outbound(stable_event_id(instance_id, event.value, at.isoformat()), data)


# --- the read model ---------------------------------------------------------------------------


def test_events_apply_in_the_order_they_occurred_not_arrived() -> None:
    index = InstanceIndex()
    index.on_status(outbound(EventType.STARTED, "a", "RUNNING", T0))
    index.on_status(outbound(EventType.COMPLETED, "a", "COMPLETED", T0 + timedelta(seconds=2)))
    index.on_status(outbound(EventType.SUSPENDED, "a", "SUSPENDED", T0 + timedelta(seconds=1)))
    entry = index.get("a")
    assert entry is not None and entry.status == "COMPLETED"
    assert [i.data["event"] for i in index.recent("a")] == ["started", "suspended", "completed"]


def test_a_read_begun_before_an_event_does_not_undo_it() -> None:
    index = InstanceIndex()
    index.on_status(outbound(EventType.COMPLETED, "a", "COMPLETED", T0 + timedelta(seconds=5)))
    index.from_state(state("a", "RUNNING"), T0)  # read before the completion
    entry = index.get("a")
    assert entry is not None and entry.status == "COMPLETED"


def test_a_purge_is_not_brought_back_by_an_older_read_and_listing_drops_the_gone() -> None:
    index = InstanceIndex()
    index.from_state(state("a", "COMPLETED"), T0)
    index.from_state(state("b", "COMPLETED"), T0)
    index.on_status(outbound(EventType.PURGED, "a", "PURGED", T0 + timedelta(seconds=3)))
    index.from_state(state("a", "COMPLETED"), T0 + timedelta(seconds=1))
    assert index.get("a") is None
    assert index.drop_missing({"x"}, T0 + timedelta(seconds=10)) == 1  # b was purged by others
    assert index.ids() == set()


def test_query_filters_counts_sorts_and_pages() -> None:
    index = InstanceIndex()
    now = datetime.now(UTC)
    for n in range(30):
        status = ("RUNNING", "COMPLETED", "FAILED")[n % 3]
        workflow = "approval_workflow" if n < 20 else "counter_workflow"
        index.from_state(
            state(f"order-{n:02d}", status, workflow, created=now - timedelta(hours=n)), now
        )
    page = index.query(Filter(workflow="approval_workflow"), "id", False, 2, 5)
    assert page.total == 20 and page.pages == 4
    assert [e.instance_id for e in page.items] == [f"order-{n:02d}" for n in range(5, 10)]
    assert page.counts["RUNNING"] == 7 and page.counts["COMPLETED"] == 7
    only = index.query(Filter(statuses=frozenset({"FAILED"}), older_than=timedelta(hours=10)))
    assert {e.instance_id for e in only.items} == {
        f"order-{n:02d}" for n in (11, 14, 17, 20, 23, 26, 29)
    }
    assert only.counts["RUNNING"] == 6  # counts ignore the status filter
    young = index.query(Filter(newer_than=timedelta(minutes=150), id_contains="ORDER-0"))
    assert {e.instance_id for e in young.items} == {"order-00", "order-01", "order-02"}


# --- who may do what ----------------------------------------------------------------------------


def test_tokens_by_digest_and_signed_sessions() -> None:
    users = [ConsoleUser(name="ana", role="operator", token_sha256=digest("a-secret-token-000"))]
    auth = Authenticator(users, b"s" * 32)
    user = auth.by_token("a-secret-token-000")
    assert user is not None and user.can_act
    assert auth.by_token("wrong") is None and auth.by_authorization("Basic abc") is None
    cookie = auth.session_cookie(user)
    found = auth.from_cookie(cookie)
    assert found is not None and found.user == user and found.csrf
    body, _, sig = cookie.rpartition(".")
    tampered = ("A" if body[-1] != "A" else "B") + body[1:]
    assert auth.from_cookie(f"{tampered}.{sig}") is None
    assert Authenticator(users, b"t" * 32).from_cookie(cookie) is None  # another key
    assert Authenticator([]).generated_token  # no users: one operator token made


def test_without_a_token_nothing_is_shown_or_done() -> None:
    r = rig([state("a")])
    assert r.client.get("/api/instances").status_code == 401
    assert (
        r.client.get("/api/instances", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert r.client.post("/api/instances/a/suspend").status_code == 401
    page = r.client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert r.gateway.mutations() == []


def test_a_viewer_reads_but_may_not_act() -> None:
    r = rig([state("a")])
    assert r.client.get("/api/instances", headers=r.as_viewer()).json()["total"] == 1
    for path in ("/api/instances/a/suspend", "/api/instances", "/api/purge", "/api/bulk"):
        answer = r.client.post(path, headers=r.as_viewer(), json={"action": "suspend"})
        assert answer.status_code == 403, path
        assert "viewer" in answer.json()["detail"]
    assert r.gateway.mutations() == [] and r.published() == []


def signed_in(r: Rig, token: str = OPERATOR_TOKEN) -> str:
    """Sign the test client in through the login form; the page's CSRF token."""
    answer = r.client.post("/login", data={"token": token, "next": "/"})
    assert answer.status_code == 200, answer.text
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', answer.text)
    assert found is not None
    return found.group(1)


def test_browser_actions_need_the_csrf_token_and_the_same_origin() -> None:
    r = rig([state("a")])
    csrf = signed_in(r)
    refused = r.client.post("/ui/instances/a/suspend", data={"reason": "x"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    cross = r.client.post(
        "/ui/instances/a/suspend",
        data={"reason": "x"},
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    assert r.gateway.mutations() == []
    done = r.client.post(
        "/ui/instances/a/suspend",
        data={"reason": "peak hours"},
        headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:8088"},
    )
    assert done.status_code == 200 and "Done" in done.text
    assert r.gateway.mutations() == [("suspend", "a", "peak hours")]


def test_a_viewer_signed_in_sees_no_action_and_cannot_post_one() -> None:
    r = rig([state("a")])
    csrf = signed_in(r, VIEWER_TOKEN)
    assert 'id="bulk"' not in r.client.get("/").text
    answer = r.client.post("/ui/instances/a/suspend", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 403 and "viewer" in answer.text


# --- actions: through the line, with their outcome ------------------------------------------------


def test_start_answers_201_with_the_started_event_and_the_key_makes_it_idempotent() -> None:
    r = rig()
    headers = {**r.as_operator(), "Idempotency-Key": "start-1"}
    body = {"workflow": "approval_workflow", "instance_id": "order-9", "input": {"amount": 5}}
    first = r.client.post("/api/instances", headers=headers, json=body)
    assert first.status_code == 201, first.text
    result = first.json()
    assert result["outcome"] == "done" and result["instance_id"] == "order-9"
    assert [e["data"]["event"] for e in result["events"]] == ["started"]
    assert result["events"][0]["data"]["correlation_id"] == "start-1"
    again = r.client.post("/api/instances", headers=headers, json=body)
    assert again.json()["events"] == result["events"]  # the same CloudEvent ids
    assert [c[0] for c in r.gateway.mutations()] == ["start"]  # started once
    assert [b["event"] for b in r.published()] == ["started", "started"]
    assert r.index.get("order-9") is not None  # the list knows it at once


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "reason"),
    [
        ("/api/instances", {"workflow": "nope"}, 422, "unknown_workflow", "not allowed"),
        (
            "/api/instances",
            {"workflow": "approval_workflow", "x": 1},
            422,
            "invalid_message",
            "invalid message",
        ),
        ("/api/instances", b"[1, 2", 422, "invalid_message", "not valid JSON"),
        (
            "/api/instances",
            {"workflow": "approval_workflow", "instance_id": "a"},
            409,
            "instance_exists",
            "already exists",
        ),
        ("/api/instances/nope/suspend", {}, 404, "unknown_instance", "unknown instance"),
        ("/api/instances/done/suspend", {}, 409, "state_forbids", "COMPLETED"),
        ("/api/instances/a/resume", {}, 409, "state_forbids", "only a suspended"),
        ("/api/instances/a/purge", {}, 409, "state_forbids", "only a finished"),
        ("/api/instances/done/terminate", {}, 409, "state_forbids", "already finished"),
        ("/api/instances/done/events", {"data": True}, 409, "state_forbids", "already finished"),
        ("/api/instances/nope/events", {"data": True}, 404, "unknown_instance", "unknown instance"),
        ("/api/instances/a/terminate", {"reason": 5}, 422, "invalid_message", "reason"),
        ("/api/purge", {"older_than": "soon"}, 422, "invalid_message", "older_than"),
    ],
)
def test_every_rejection_has_its_status_code_and_reason_and_does_nothing(
    path: str, body: object, status: int, code: str, reason: str
) -> None:
    r = rig([state("a"), state("done", "COMPLETED")])
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    answer = r.client.post(path, headers=r.as_operator(), **kwargs)
    assert answer.status_code == status, answer.text
    result = answer.json()
    assert result["outcome"] == "rejected" and reason in result["reason"]
    assert result["code"] == code
    assert [(e["data"]["event"], e["data"]["code"]) for e in result["events"]] == [
        ("rejected", code)
    ]
    assert [b["event"] for b in r.published()] == ["rejected"]  # on the status topic too
    assert r.gateway.mutations() == []


@pytest.mark.parametrize(("code", "status"), sorted(REJECTION_STATUS.items()))
def test_the_http_status_of_a_rejection_follows_its_code_not_its_text(
    code: RejectCode, status: int
) -> None:
    """Whatever the reason says (here: words of other codes), the code decides the status."""
    r = rig([state("a")])

    def refuse(instance_id: str, reason: str | None) -> None:
        raise Rejected("unknown instance a: already exists, gave up after 3", code=code)

    r.gateway.suspend = refuse  # type: ignore[method-assign]
    answer = r.client.post("/api/instances/a/suspend", headers=r.as_operator())
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code.value


def test_a_done_action_has_no_code() -> None:
    r = rig([state("a")])
    answer = r.client.post("/api/instances/a/suspend", headers=r.as_operator())
    assert answer.status_code == 200 and answer.json()["code"] is None


def test_bad_idempotency_key_and_bad_filters_are_400_and_422() -> None:
    r = rig([state("a")])
    bad_key = {**r.as_operator(), "Idempotency-Key": "has space"}
    assert r.client.post("/api/instances/a/suspend", headers=bad_key).status_code == 400
    listed = r.client.get("/api/instances?older_than=soon", headers=r.as_viewer())
    assert listed.status_code == 422 and "older_than" in listed.json()["detail"]
    assert r.client.get("/api/instances?status=NOPE", headers=r.as_viewer()).status_code == 422
    bulk = r.client.post("/api/bulk", headers=r.as_operator(), json={"action": "explode"})
    assert bulk.status_code == 422


def test_a_slow_action_answers_202_and_the_same_key_later_gives_its_outcome() -> None:
    r = rig([state("a")], timeout=0.2)
    original = r.gateway.suspend

    def slow(instance_id: str, reason: str | None) -> None:
        time.sleep(0.6)
        original(instance_id, reason)

    r.gateway.suspend = slow  # type: ignore[method-assign]
    headers = {**r.as_operator(), "Idempotency-Key": "slow-1"}
    first = r.client.post("/api/instances/a/suspend", headers=headers)
    assert first.status_code == 202 and first.json()["outcome"] == "pending"
    time.sleep(0.8)
    second = r.client.post("/api/instances/a/suspend", headers=headers)
    assert second.status_code == 200 and second.json()["events"][0]["data"]["event"] == "suspended"
    assert len(r.gateway.mutations()) == 1


# --- bulk ---------------------------------------------------------------------------------------


def wait_job(r: Rig, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = r.client.get(f"/api/jobs/{job_id}", headers=r.as_viewer()).json()
        if job["state"] == "finished":
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_bulk_purge_acts_only_on_finished_filtered_older_instances() -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    young = datetime.now(UTC) - timedelta(days=1)
    r = rig(
        [
            state("p-old-done", "COMPLETED", created=old),
            state("p-old-failed", "FAILED", created=old),
            state("p-young-done", "COMPLETED", created=young),
            state("p-old-running", "RUNNING", created=old),
            state("q-old-done", "COMPLETED", created=old),
        ]
    )
    body = {"action": "purge", "filter": {"q": "p-"}, "older_than": "30d"}
    preview = r.client.post("/api/bulk?dry_run=true", headers=r.as_operator(), json=body)
    assert preview.status_code == 200
    assert preview.json()["instance_ids"] == ["p-old-done", "p-old-failed"]
    assert r.gateway.mutations() == []
    started = r.client.post("/api/bulk", headers=r.as_operator(), json=body)
    assert started.status_code == 202
    job = wait_job(r, started.json()["job_id"])
    assert job["summary"] == {"done": 2}
    assert sorted(c[1] for c in r.gateway.mutations()) == ["p-old-done", "p-old-failed"]
    assert sorted(b["instance_id"] for b in r.published()) == ["p-old-done", "p-old-failed"]


def test_bulk_suspend_by_the_page_asks_first_then_reports() -> None:
    r = rig([state("a"), state("b"), state("c", "SUSPENDED")])
    csrf = signed_in(r)
    prepared = r.client.post(
        "/ui/bulk", data={"action": "suspend", "reason": "peak", "csrf_token": csrf}
    )
    assert prepared.status_code == 200 and "Suspend 2 instance(s)?" in prepared.text
    assert r.gateway.mutations() == []  # nothing before the confirmation
    job_id = re.search(r'id="job-([0-9a-f]+)"', prepared.text)
    assert job_id is not None
    r.client.post(f"/ui/jobs/{job_id.group(1)}", data={"csrf_token": csrf})
    job = wait_job(r, job_id.group(1))
    assert job["summary"] == {"done": 2}
    assert sorted(r.gateway.mutations()) == [("suspend", "a", "peak"), ("suspend", "b", "peak")]


def test_a_bulk_jobs_results_carry_each_rejections_code_and_status() -> None:
    r = rig([state("a"), state("done", "COMPLETED")])
    job = r.context.jobs.prepare("ana", "suspend", ["a", "done", "nope"])
    r.context.jobs.run(job)
    finished = wait_job(r, job.id)
    results = {x["instance_id"]: x for x in finished["results"]}  # type: ignore[attr-defined]
    assert {i: (x["outcome"], x["code"], x["http_status"]) for i, x in results.items()} == {
        "a": ("done", None, 200),
        "done": ("rejected", "state_forbids", 409),
        "nope": ("rejected", "unknown_instance", 404),
    }


# --- pages ---------------------------------------------------------------------------------------


def test_pages_render_the_list_an_instance_and_the_api_docs_without_any_cdn() -> None:
    r = rig([state("order-1", custom_status="waiting for approval", input={"amount": 5})])
    r.gateway.histories["order-1"] = []
    signed_in(r)
    listed = r.client.get("/?status=RUNNING")
    assert listed.status_code == 200 and 'data-instance="order-1"' in listed.text
    page = r.client.get("/instances/order-1")
    assert page.status_code == 200 and "waiting for approval" in page.text
    docs = r.client.get("/api/docs")
    assert docs.status_code == 200 and "/api/instances/{instance_id}/suspend" in docs.text
    for text in (listed.text, page.text, docs.text):
        assert not re.search(r'(src|href)="https?://', text)
    assert r.client.get("/static/htmx.min.js").status_code == 200
    assert r.client.get("/?older_than=soon").status_code == 422


def test_openapi_documents_every_endpoint_and_the_message_bodies() -> None:
    r = rig()
    doc = r.client.get("/api/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/api/instances",
        "/api/instances/{instance_id}",
        "/api/instances/{instance_id}/history",
        "/api/instances/{instance_id}/events",
        "/api/instances/{instance_id}/suspend",
        "/api/instances/{instance_id}/resume",
        "/api/instances/{instance_id}/terminate",
        "/api/instances/{instance_id}/purge",
        "/api/purge",
        "/api/bulk",
        "/api/jobs/{job_id}",
        "/api/events",
    ):
        assert path in paths, path
    assert "StartWorkflow" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    start = paths["/api/instances"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in start["parameters"])
    schemas = doc["components"]["schemas"]
    codes = [c.value for c in RejectCode]
    assert schemas["RejectCode"]["enum"] == codes
    assert "RejectCode" in str(schemas["ActionResult"]["properties"]["code"])
    assert "RejectCode" in str(schemas["JobResultOut"]["properties"]["code"])
    assert "JobResultOut" in str(schemas["JobOut"]["properties"]["results"])
    assert "`unknown_instance`" in start["responses"]["404"]["description"]
    assert "`gave_up`" in start["responses"]["503"]["description"]
    assert all(f"`{code}`" in doc["info"]["description"] for code in codes)
