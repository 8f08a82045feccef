"""`wfctl watch`: an instance's event that arrives before its predecessor is held back until
the predecessor comes (or for a while), so each instance's events show in the order they
happened; nothing is held when they arrive in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.unit.fakes import FakeClock
from worker.cli.ordering import HOLD_SECONDS, InOrder
from worker.events import StatusEvent

BEGAN = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def event(
    kind: str, instance_id: str | None = "order-1", at: float = 0, **fields: Any
) -> StatusEvent:
    defaults: dict[str, Any] = {
        "started": {"status": "RUNNING"},
        "completed": {"status": "COMPLETED", "previous_status": "RUNNING"},
        "suspended": {"status": "SUSPENDED", "previous_status": "RUNNING"},
        "resumed": {"status": "RUNNING", "previous_status": "SUSPENDED"},
        "event_raised": {"status": "RUNNING"},
    }.get(kind, {})
    return StatusEvent.model_validate(
        {
            "event": kind,
            "instance_id": instance_id,
            "occurred_at": BEGAN + timedelta(seconds=at),
            "created_at": BEGAN + timedelta(seconds=1),
            **defaults,
            **fields,
        }
    )


def ordered(clock: FakeClock | None = None) -> InOrder[str]:
    clock = clock or FakeClock()
    return InOrder(BEGAN, clock=clock.monotonic)


def test_events_in_order_are_shown_at_once() -> None:
    order = ordered()
    assert order.add(event("started", at=1), "started") == ["started"]
    assert order.add(event("suspended", at=2), "suspended") == ["suspended"]
    assert order.add(event("resumed", at=3), "resumed") == ["resumed"]
    assert order.add(event("completed", at=4), "completed") == ["completed"]
    assert not order.holding


def test_a_completed_before_its_started_is_held_until_the_started_comes() -> None:
    """The case seen: `started` taken by a dead stream's read, reclaimed seconds later."""
    order = ordered()
    assert order.add(event("completed", at=2), "completed") == []
    assert order.holding
    assert order.add(event("started", at=1), "started") == ["started", "completed"]
    assert not order.holding


def test_a_change_whose_predecessor_is_missing_waits_for_it() -> None:
    order = ordered()
    order.add(event("started", at=1), "started")
    assert order.add(event("resumed", at=3), "resumed") == []  # its `suspended` is still to come
    assert order.add(event("suspended", at=2), "suspended") == ["suspended", "resumed"]


def test_what_waited_long_enough_is_shown_anyway_in_order() -> None:
    clock = FakeClock()
    order = ordered(clock)
    assert order.add(event("completed", at=3), "completed") == []
    assert order.add(event("event_raised", at=2), "raised") == []  # behind the hole too
    clock.sleep(HOLD_SECONDS - 0.1)
    assert order.due() == []
    clock.sleep(0.2)
    assert order.due() == ["raised", "completed"]
    assert order.add(event("started", at=1), "started") == ["started"]  # late, but not lost


def test_instances_are_ordered_independently() -> None:
    order = ordered()
    assert order.add(event("completed", "a", at=2), "a completed") == []
    assert order.add(event("started", "b", at=1), "b started") == ["b started"]
    assert order.add(event("completed", "b", at=3), "b completed") == ["b completed"]
    assert order.add(event("started", "a", at=1), "a started") == ["a started", "a completed"]


def test_an_instance_created_before_the_watch_is_not_waited_for() -> None:
    """Its start happened before the watch: it will not come."""
    order = ordered()
    before = BEGAN - timedelta(minutes=5)
    assert order.add(event("completed", at=2, created_at=before), "completed") == ["completed"]


def test_events_without_an_instance_and_starts_are_never_held() -> None:
    order = ordered()
    bulk = event("purged", None, at=1, count=3)
    assert order.add(bulk, "bulk") == ["bulk"]
    assert order.add(event("scheduled", "later", at=1, status="PENDING"), "scheduled") == [
        "scheduled"
    ]


def test_the_end_of_the_watch_flushes_what_is_held_in_order() -> None:
    order = ordered()
    order.add(event("completed", at=3), "completed")
    order.add(event("event_raised", at=2), "raised")
    assert order.flush() == ["raised", "completed"]
    assert not order.holding
