"""The declared vocabularies (`worker.actions`, `worker.topics`, `worker.events.MEANINGS`) and
every surface they reach: each declared action by message, through the console's pages and API
(and its bulk form when declared), through wfctl, and in the generated schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.console_support import Rig, rig, state
from tests.unit.fakes import FakeGateway, inbound
from tests.unit.test_cli_app import FakeSidecar, sidecar, wfctl  # noqa: F401  (fixture)
from tests.unit.test_console import signed_in
from worker import schemas
from worker.actions import ACTIONS, BULK_ACTIONS, Action, control_adapter, observed
from worker.cli import app
from worker.config import Settings
from worker.events import MEANINGS, EventType
from worker.handlers.control import ControlHandler
from worker.idempotency import Begin, Claim
from worker.topics import TOPICS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
NAMES = [a.name for a in ACTIONS]


def _status_for(action: Action[Any]) -> str:
    """A status the action is allowed from (a read: any)."""
    return sorted(action.change.allowed_from)[0] if action.change is not None else "RUNNING"


def _gateway(action: Action[Any]) -> FakeGateway:
    return FakeGateway(states={"i-1": state("i-1", _status_for(action))}, histories={"i-1": []})


def _answered(outcome: dict[str, Any], action: Action[Any]) -> None:
    assert outcome["outcome"] == "done", outcome
    assert [e["data"]["event"] for e in outcome["events"]] == [action.event.value]


# --- the tables themselves --------------------------------------------------------------


def test_every_event_type_has_a_meaning() -> None:
    assert set(MEANINGS) == set(EventType)


def test_every_topic_is_a_setting_with_its_default() -> None:
    defaults = Settings.model_construct()
    assert [t.address(defaults) for t in TOPICS] == [t.default for t in TOPICS]
    assert {t.setting for t in TOPICS} <= set(Settings.model_fields)


def test_each_action_is_one_model_and_one_row() -> None:
    assert len(set(NAMES)) == len(NAMES) == len({a.model for a in ACTIONS})
    for action in ACTIONS:
        message = control_adapter.validate_python({"action": action.name, "instance_id": "i-1"})
        assert type(message) is action.model


def test_the_watch_tells_an_action_by_the_status_it_leaves() -> None:
    assert observed("RUNNING", "SUSPENDED") is not None
    assert observed("RUNNING", "SUSPENDED").name == "suspend"  # type: ignore[union-attr]
    assert observed("SUSPENDED", "RUNNING").name == "resume"  # type: ignore[union-attr]
    assert observed("PENDING", "RUNNING") is None  # a start, told by the watch's new run
    assert observed("SUSPENDED", "TERMINATED").name == "terminate"  # type: ignore[union-attr]
    assert observed("RUNNING", "COMPLETED") is None  # the workflow reports its own end


# --- every action, on every surface -----------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS, ids=NAMES)
def test_by_message(action: Action[Any]) -> None:
    gateway = _gateway(action)
    handler = ControlHandler(gateway)  # type: ignore[arg-type]
    body = {"action": action.name, "instance_id": "i-1"}
    events = handler.handle(inbound(body, topic="workflow.control"), Claim(Begin.NEW, "key"))
    assert [o.event.event for o in events] == [action.event]
    if action.change is not None:
        assert events[0].event.status == action.change.target
        assert [c[0] for c in gateway.calls if c[0] != "get_state"] == [action.name]


@pytest.mark.parametrize("action", ACTIONS, ids=NAMES)
def test_by_the_api(action: Action[Any]) -> None:
    r: Rig = rig([state("i-1", _status_for(action))])
    r.gateway.histories["i-1"] = []
    answer = r.client.post(
        f"/api/instances/i-1/{action.name}", headers=r.as_operator(), content=b"{}"
    )
    assert answer.status_code == 200, answer.text
    _answered(answer.json(), action)
    doc = r.client.get("/api/openapi.json").json()
    assert f"/api/instances/{{instance_id}}/{action.name}" in doc["paths"]


@pytest.mark.parametrize("action", ACTIONS, ids=NAMES)
def test_by_the_console_page(action: Action[Any]) -> None:
    r = rig([state("i-1", _status_for(action))])
    r.gateway.histories["i-1"] = []
    csrf = signed_in(r)
    answer = r.client.post(
        f"/ui/instances/i-1/{action.name}",
        data={"reason": "because"},
        headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:8088"},
    )
    assert answer.status_code == 200, answer.text
    events = r.published()
    assert [e["event"] for e in events] == [action.event.value]
    assert events[0].get("reason") == ("because" if action.takes_reason else None)


@pytest.mark.parametrize("action", [a for a in ACTIONS if a.bulk], ids=BULK_ACTIONS)
def test_in_bulk_where_declared(action: Action[Any]) -> None:
    allowed = state("i-1", _status_for(action))
    forbidden = next(
        state("i-2", s) for s in ("RUNNING", "SUSPENDED", "COMPLETED") if not action.allows(s)
    )
    r = rig([allowed, forbidden])
    answer = r.client.post(
        "/api/bulk?dry_run=true", headers=r.as_operator(), json={"action": action.name}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["instance_ids"] == ["i-1"]


def test_no_bulk_form_where_none_is_declared() -> None:
    r = rig([state("i-1")])
    for action in ACTIONS:
        if not action.bulk:
            answer = r.client.post(
                "/api/bulk?dry_run=true", headers=r.as_operator(), json={"action": action.name}
            )
            assert answer.status_code == 422, action.name


@pytest.mark.parametrize("action", ACTIONS, ids=NAMES)
def test_by_wfctl(action: Action[Any], sidecar: FakeSidecar) -> None:  # noqa: F811
    assert action.name in app.cli.commands
    sidecar.answer = lambda topic, body, message_id: [
        {
            "event": action.event.value,
            "instance_id": body["instance_id"],
            "occurred_at": "2026-11-30T10:00:00Z",
            "correlation_id": message_id,
        }
    ]
    result = wfctl(action.name, "i-1", "--wait")
    assert result.code == 0, result.err
    assert result.json()["event"] == action.event.value
    ((_, topic, body, _, _),) = sidecar.published
    assert topic == "workflow.control"
    assert type(control_adapter.validate_python(body)) is action.model
    assert body["instance_id"] == "i-1"


@pytest.mark.parametrize("action", ACTIONS, ids=NAMES)
def test_in_the_schemas(action: Action[Any]) -> None:
    generated = schemas.documents()
    control = generated["workflow.control.schema.json"]
    assert action.name in control["discriminator"]["mapping"]
    committed = json.loads((DOCS / "workflow.control.schema.json").read_text())
    assert action.name in committed["discriminator"]["mapping"]
    asyncapi = generated["asyncapi.json"]
    payload = asyncapi["components"]["messages"]["workflow_control"]["payload"]
    assert action.name in payload["properties"]["action"]["enum"]
    assert action.model.__name__ in asyncapi["components"]["schemas"]
