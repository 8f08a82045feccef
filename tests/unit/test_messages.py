"""Validation of the inbound message models (what a publisher may send on each topic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from worker.actions import control_adapter
from worker.messages import (
    Purge,
    Query,
    RaiseEvent,
    Resume,
    StartWorkflow,
    Suspend,
    TerminalStatus,
    Terminate,
)

# --- StartWorkflow -------------------------------------------------------------------------


def test_start_minimal_message_gets_defaults() -> None:
    msg = StartWorkflow.model_validate({"workflow": "counter_workflow"})
    assert msg.workflow == "counter_workflow"
    assert msg.instance_id is None
    assert msg.input is None
    assert msg.start_at is None
    assert msg.replace is False


def test_start_full_message_is_accepted() -> None:
    msg = StartWorkflow.model_validate(
        {
            "workflow": "approval_workflow",
            "instance_id": "order-1001",
            "input": {"order_id": "1001", "amount": 2500, "tags": ["a", None, 1.5]},
            "start_at": "2026-12-01T09:00:00+02:00",
            "replace": True,
        }
    )
    assert msg.instance_id == "order-1001"
    assert msg.input == {"order_id": "1001", "amount": 2500, "tags": ["a", None, 1.5]}
    assert msg.start_at == datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    assert msg.replace is True


@pytest.mark.parametrize("field", ["instanceId", "workflow_name", "extra"])
def test_start_rejects_unknown_fields(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        StartWorkflow.model_validate({"workflow": "w", field: "x"})
    errors = info.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"] == (field,)


def test_start_requires_workflow() -> None:
    with pytest.raises(ValidationError) as info:
        StartWorkflow.model_validate({"instance_id": "a"})
    assert info.value.errors()[0]["loc"] == ("workflow",)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a|b", "a/b"])
def test_start_rejects_bad_workflow_names(name: str) -> None:
    with pytest.raises(ValidationError):
        StartWorkflow.model_validate({"workflow": name})


@pytest.mark.parametrize("instance_id", ["order-1001", "a", "A1_b.c:d@e-f", "9lives", "x" * 256])
def test_start_accepts_valid_instance_ids(instance_id: str) -> None:
    msg = StartWorkflow.model_validate({"workflow": "w", "instance_id": instance_id})
    assert msg.instance_id == instance_id


@pytest.mark.parametrize(
    "instance_id",
    ["", "order 1001", " order", "order|1001", "-leading-dash", "_x", "a/b", "x" * 257, "é"],
)
def test_start_rejects_invalid_instance_ids(instance_id: str) -> None:
    with pytest.raises(ValidationError) as info:
        StartWorkflow.model_validate({"workflow": "w", "instance_id": instance_id})
    assert info.value.errors()[0]["loc"] == ("instance_id",)


@pytest.mark.parametrize(
    "start_at", ["2026-12-01T09:00:00Z", "2026-12-01T09:00:00+00:00", "2026-12-01T09:00:00-05:30"]
)
def test_start_at_with_offset_is_accepted(start_at: str) -> None:
    msg = StartWorkflow.model_validate({"workflow": "w", "start_at": start_at})
    assert msg.start_at is not None
    assert msg.start_at.utcoffset() is not None


@pytest.mark.parametrize("start_at", ["2026-12-01T09:00:00", "2026-12-01 09:00"])
def test_start_at_without_offset_is_rejected(start_at: str) -> None:
    with pytest.raises(ValidationError) as info:
        StartWorkflow.model_validate({"workflow": "w", "start_at": start_at})
    assert info.value.errors()[0]["loc"] == ("start_at",)
    assert "timezone" in info.value.errors()[0]["msg"].lower()


def test_start_messages_are_frozen() -> None:
    msg = StartWorkflow.model_validate({"workflow": "w"})
    with pytest.raises(ValidationError):
        msg.workflow = "other"  # type: ignore[misc]


# --- RaiseEvent ----------------------------------------------------------------------------


def test_raise_event_defaults_event_name() -> None:
    msg = RaiseEvent.model_validate({"instance_id": "order-1", "data": {"approved": True}})
    assert msg.event_name == "approval_decision"
    assert msg.data == {"approved": True}


@pytest.mark.parametrize("data", [False, 0, {}, [], "", 0.0])
def test_raise_event_keeps_falsy_data_as_given(data: Any) -> None:
    msg = RaiseEvent.model_validate({"instance_id": "order-1", "data": data})
    assert msg.data is not None
    assert msg.data == data
    assert type(msg.data) is type(data)


def test_raise_event_without_data_is_none() -> None:
    assert RaiseEvent.model_validate({"instance_id": "order-1"}).data is None


def test_raise_event_custom_event_name() -> None:
    msg = RaiseEvent.model_validate({"instance_id": "order-1", "event_name": "cancel"})
    assert msg.event_name == "cancel"


@pytest.mark.parametrize(
    "body",
    [
        {"instance_id": "order-1", "event_name": ""},
        {"instance_id": "order 1"},
        {"event_name": "x"},
        {"instance_id": "order-1", "eventName": "x"},
    ],
)
def test_raise_event_rejects_invalid(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RaiseEvent.model_validate(body)


# --- control union -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"action": "suspend", "instance_id": "a", "reason": "maintenance"}, Suspend),
        ({"action": "resume", "instance_id": "a"}, Resume),
        ({"action": "terminate", "instance_id": "a", "output": False}, Terminate),
        ({"action": "purge", "instance_id": "a"}, Purge),
        ({"action": "purge"}, Purge),
        ({"action": "query", "instance_id": "a"}, Query),
    ],
)
def test_control_actions_pick_their_model(body: dict[str, Any], model: type) -> None:
    assert type(control_adapter.validate_python(body)) is model


def test_terminate_defaults_and_falsy_output() -> None:
    msg = control_adapter.validate_python({"action": "terminate", "instance_id": "a"})
    assert isinstance(msg, Terminate)
    assert msg.recursive is True
    assert msg.output is None
    msg = control_adapter.validate_python(
        {"action": "terminate", "instance_id": "a", "output": 0, "recursive": False}
    )
    assert isinstance(msg, Terminate)
    assert msg.output == 0
    assert msg.output is not None
    assert msg.recursive is False


@pytest.mark.parametrize("action", ["stop", "SUSPEND", "", None])
def test_control_rejects_unknown_action(action: Any) -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python({"action": action, "instance_id": "a"})
    assert info.value.errors()[0]["type"] in {"union_tag_invalid", "union_tag_not_found"}


def test_control_requires_action() -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python({"instance_id": "a"})
    assert info.value.errors()[0]["type"] == "union_tag_not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"action": "suspend", "instance_id": "a", "instanceId": "a"},
        {"action": "query", "instance_id": "a", "reason": "x"},
        {"action": "purge", "older": "1h"},
    ],
)
def test_control_rejects_unknown_fields(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python(body)
    assert "extra_forbidden" in {e["type"] for e in info.value.errors()}


@pytest.mark.parametrize("action", ["suspend", "resume", "terminate", "query"])
def test_control_single_instance_actions_require_instance_id(action: str) -> None:
    with pytest.raises(ValidationError):
        control_adapter.validate_python({"action": action})


@pytest.mark.parametrize("action", ["suspend", "resume", "terminate", "query", "purge"])
def test_control_instance_id_pattern_applies(action: str) -> None:
    with pytest.raises(ValidationError):
        control_adapter.validate_python({"action": action, "instance_id": "a|b"})


# --- Purge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"older_than": "720h"},
        {"statuses": ["FAILED"]},
        {"older_than": "1h", "statuses": ["FAILED"]},
    ],
)
def test_purge_instance_id_with_bulk_filters_is_rejected(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python({"action": "purge", "instance_id": "a", **extra})
    assert "either instance_id or the bulk filters" in str(info.value)


def test_purge_single_is_not_bulk() -> None:
    msg = control_adapter.validate_python({"action": "purge", "instance_id": "a"})
    assert isinstance(msg, Purge)
    assert not msg.is_bulk
    assert msg.recursive is True


def test_purge_bulk_filters() -> None:
    msg = control_adapter.validate_python(
        {"action": "purge", "statuses": ["FAILED", "TERMINATED"], "older_than": "720h"}
    )
    assert isinstance(msg, Purge)
    assert msg.is_bulk
    assert msg.statuses == [TerminalStatus.FAILED, TerminalStatus.TERMINATED]
    assert msg.older_than == timedelta(hours=720)


@pytest.mark.parametrize("status", ["RUNNING", "PENDING", "SUSPENDED", "completed", "PURGED"])
def test_purge_statuses_only_terminal(status: str) -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python({"action": "purge", "statuses": [status]})
    assert info.value.errors()[0]["loc"][-2:] == ("statuses", 0)


def test_purge_statuses_must_not_be_empty() -> None:
    with pytest.raises(ValidationError):
        control_adapter.validate_python({"action": "purge", "statuses": []})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("720h", timedelta(hours=720)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1m", timedelta(minutes=1)),
        ("2h45m10s", timedelta(hours=2, minutes=45, seconds=10)),
        ("1.5h", timedelta(minutes=90)),
        ("1m500ms", timedelta(seconds=60.5)),
        ("P1D", timedelta(days=1)),
        ("P30D", timedelta(days=30)),
        ("PT1H", timedelta(hours=1)),
        (3600, timedelta(hours=1)),
    ],
)
def test_purge_older_than_durations(text: str | int, expected: timedelta) -> None:
    msg = control_adapter.validate_python({"action": "purge", "older_than": text})
    assert isinstance(msg, Purge)
    assert msg.older_than == expected


@pytest.mark.parametrize("text", ["1y", "h", "1h 30m", "abc", "1x", "-1h", "PXD"])
def test_purge_older_than_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        control_adapter.validate_python({"action": "purge", "older_than": text})
    assert info.value.errors()[0]["loc"][-1] == "older_than"


def test_reason_length_is_limited() -> None:
    ok = control_adapter.validate_python(
        {"action": "suspend", "instance_id": "a", "reason": "r" * 2000}
    )
    assert isinstance(ok, Suspend)
    with pytest.raises(ValidationError):
        control_adapter.validate_python(
            {"action": "suspend", "instance_id": "a", "reason": "r" * 2001}
        )


@pytest.mark.parametrize("older_than", ["-P1D", "0s", "PT0S"])
def test_bulk_purge_needs_a_positive_age(older_than: str) -> None:
    with pytest.raises(ValidationError, match="positive duration"):
        control_adapter.validate_python({"action": "purge", "older_than": older_than})
