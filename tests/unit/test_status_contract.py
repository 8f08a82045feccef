"""The consumer-side checks themselves, and that what the worker builds passes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.status_contract import order_violations, schema_errors
from worker.events import EventType, StatusEvent

_T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def _published(**fields: Any) -> dict[str, Any]:
    """The data of a status event as the publisher sends it."""
    loaded = json.loads(StatusEvent(**fields).model_dump_json(exclude_none=True))
    assert isinstance(loaded, dict)
    return loaded


def test_naive_times_from_the_sdk_are_published_with_an_offset() -> None:
    naive = datetime(2026, 11, 30, 9, 0)  # what the SDK returns for created_at
    data = _published(
        event=EventType.STATE,
        instance_id="i",
        created_at=naive,
        last_updated_at=naive,
        occurred_at=naive,
    )
    for name in ("created_at", "last_updated_at", "occurred_at"):
        assert data[name] == "2026-11-30T09:00:00Z" or data[name].endswith("+00:00"), data
        assert datetime.fromisoformat(data[name]) == naive.replace(tzinfo=UTC)
    assert schema_errors(data) == []


def test_times_in_other_zones_are_published_in_utc() -> None:
    local = datetime(2026, 11, 30, 11, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    data = _published(event=EventType.STARTED, instance_id="i", occurred_at=local)
    assert datetime.fromisoformat(data["occurred_at"]).utcoffset() == timedelta(0)


def test_the_schema_check_catches_a_time_without_offset() -> None:
    data = _published(event=EventType.STARTED, instance_id="i", occurred_at=_T0)
    data["occurred_at"] = "2026-11-30T10:00:00"
    assert any("occurred_at" in e and "date-time" in e for e in schema_errors(data))
    data["occurred_at"] = _T0.isoformat()
    data["event"] = "exploded"
    assert any(e.startswith("event:") for e in schema_errors(data))


def _life(*steps: str) -> list[dict[str, Any]]:
    return [
        {"event": kind, "occurred_at": (_T0 + timedelta(seconds=i)).isoformat()}
        for i, kind in enumerate(steps)
    ]


def test_a_possible_life_has_no_violation() -> None:
    assert order_violations(_life("started", "event_raised", "completed", "purged")) == []
    assert order_violations(_life("scheduled", "event_raised", "started", "completed")) == []
    assert order_violations(_life("started", "suspended", "resumed", "terminated")) == []
    assert order_violations(_life("started", "completed", "purged", "started", "failed")) == []
    assert order_violations(_life("completed", "purged")) == []  # started elsewhere
    assert order_violations(_life("started", "rejected", "state", "completed")) == []


def test_disorder_is_found_whatever_the_arrival_order() -> None:
    ended_first = _life("completed", "started")
    assert order_violations(ended_first)
    assert order_violations(list(reversed(_life("started", "completed")))) == []
    assert order_violations(_life("started", "completed", "event_raised"))
    assert order_violations(_life("started", "resumed", "suspended"))
    assert order_violations(_life("started", "purged"))
    assert order_violations(_life("event_raised", "started", "completed"))
