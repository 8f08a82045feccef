"""wfctl's matching: which status events end a wait, and with which exit code."""

from __future__ import annotations

from typing import Any

import pytest

from worker.cli import requests as rq
from worker.cli.exitcodes import Exit
from worker.cli.outcome import REJECTION_EXIT, Wait
from worker.events import RejectCode

MSG = "msg-1"


def ev(event: str, at: str, instance: str | None = "inst-1", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event": event,
        "instance_id": instance,
        "occurred_at": f"2026-11-30T10:00:{at}Z",
    }
    data.update(fields)
    return data


def start_wait(until: rq.Until = "finished") -> Wait:
    return rq.start("greeting_workflow", instance_id="inst-1", until=until).wait(MSG)


def test_a_start_ends_with_the_instance_completed_after_its_started() -> None:
    wait = start_wait()
    assert wait.offer(ev("started", "01", correlation_id=MSG, status="RUNNING")) is None
    verdict = wait.offer(ev("completed", "02", status="COMPLETED", output="hi"))
    assert verdict is not None
    assert verdict.code is Exit.OK and verdict.event is not None
    assert verdict.event["output"] == "hi" and verdict.summary == ""


def test_failed_and_terminated_map_to_their_codes_observed_ones_too() -> None:
    wait = start_wait()
    wait.offer(ev("started", "01", correlation_id=MSG))
    failed = wait.offer(ev("failed", "02", failure={"message": "boom", "type": "RuntimeError"}))
    assert failed is not None and failed.code is Exit.FAILED
    assert failed.summary == "inst-1 failed: RuntimeError: boom"

    wait = start_wait()
    wait.offer(ev("started", "01", correlation_id=MSG))
    ended = wait.offer(ev("terminated", "03", observed=True, reason="by ops"))
    assert ended is not None and ended.code is Exit.TERMINATED
    assert ended.summary == "inst-1 was terminated (by someone else): by ops"


def test_a_rejection_of_the_message_ends_the_wait_with_5() -> None:
    wait = start_wait()
    verdict = wait.offer(
        ev(
            "rejected",
            "01",
            correlation_id=MSG,
            reason="workflow 'x' is not allowed",
            code="unknown_workflow",
        )
    )
    assert verdict is not None and verdict.code is Exit.REJECTED
    assert verdict.summary == "rejected (unknown_workflow): workflow 'x' is not allowed"
    assert verdict.event is not None and verdict.event["code"] == "unknown_workflow"


@pytest.mark.parametrize("code", list(RejectCode))
def test_the_exit_code_of_a_rejection_is_read_from_its_code(code: RejectCode) -> None:
    """Every code has its row in REJECTION_EXIT (all 5 today), whatever the reason says."""
    wait = start_wait()
    verdict = wait.offer(
        ev("rejected", "01", correlation_id=MSG, reason="unknown instance, gave up", code=code)
    )
    assert verdict is not None and verdict.code is REJECTION_EXIT[code] is Exit.REJECTED


def test_events_of_an_earlier_run_under_the_same_id_do_not_count() -> None:
    """A replayed stream (a new consumer group) or a --replace start: the old run's end
    happened before this start's anchor."""
    wait = start_wait()
    assert wait.offer(ev("completed", "00")) is None  # the earlier run, seen before the anchor
    assert wait.offer(ev("started", "05", correlation_id=MSG)) is None
    assert wait.offer(ev("completed", "04")) is None  # still the earlier run
    verdict = wait.offer(ev("completed", "06"))
    assert verdict is not None and verdict.code is Exit.OK


def test_the_end_arriving_before_the_started_is_kept_until_the_anchor() -> None:
    """Arrival order is not the order: a fast workflow's completed can come first."""
    wait = start_wait()
    assert wait.offer(ev("completed", "02", output="hi")) is None
    verdict = wait.offer(ev("started", "01", correlation_id=MSG))
    assert verdict is not None and verdict.code is Exit.OK
    assert verdict.event is not None and verdict.event["output"] == "hi"


def test_until_accepted_and_started() -> None:
    accepted = start_wait("accepted")
    verdict = accepted.offer(ev("scheduled", "01", correlation_id=MSG, status="PENDING"))
    assert verdict is not None and verdict.code is Exit.OK

    started = start_wait("started")
    assert started.offer(ev("scheduled", "01", correlation_id=MSG)) is None
    verdict = started.offer(ev("started", "09", correlation_id=MSG))
    assert verdict is not None and verdict.code is Exit.OK
    assert verdict.event is not None and verdict.event["event"] == "started"

    gone = start_wait("started")
    gone.offer(ev("scheduled", "01", correlation_id=MSG))
    ended = gone.offer(ev("terminated", "02", observed=True))
    assert ended is not None and ended.code is Exit.TERMINATED  # it will never start


def test_other_messages_and_other_instances_are_ignored() -> None:
    wait = start_wait()
    wait.offer(ev("started", "01", correlation_id=MSG))
    assert wait.offer(ev("completed", "02", instance="inst-2")) is None
    assert wait.offer(ev("rejected", "02", correlation_id="msg-2")) is None
    assert wait.offer({"not": "a status event"}) is None
    assert wait.offer("text") is None
    assert wait.offer(ev("suspended", "03", correlation_id="msg-3")) is None  # progress only
    assert wait.last is not None and wait.last.event.value == "suspended"


def test_an_action_is_done_with_its_own_event_not_the_instance_end() -> None:
    wait = rq.control("terminate", "inst-1").wait(MSG)
    verdict = wait.offer(ev("terminated", "01", correlation_id=MSG))
    assert verdict is not None and verdict.code is Exit.OK  # the action done, not 4

    suspend = rq.control("suspend", "inst-1").wait(MSG)
    assert suspend.offer(ev("suspended", "01", correlation_id="someone-else")) is None
    verdict = suspend.offer(ev("suspended", "02", correlation_id=MSG))
    assert verdict is not None and verdict.code is Exit.OK


def test_an_approval_can_follow_the_instance_to_its_end() -> None:
    wait = rq.raise_event(
        "inst-1", "approval_decision", True, has_data=True, until="finished"
    ).wait(MSG)
    assert wait.offer(ev("event_raised", "01", correlation_id=MSG)) is None
    verdict = wait.offer(ev("completed", "02"))
    assert verdict is not None and verdict.code is Exit.OK


def test_a_bulk_purge_ends_with_its_summary() -> None:
    wait = rq.control("purge", None, older_than="720h").wait(MSG)
    assert wait.offer(ev("purged", "01", instance="a", correlation_id=MSG)) is None
    assert wait.offer(ev("purged", "01", instance="b", correlation_id=MSG)) is None
    verdict = wait.offer(ev("purged", "02", instance=None, correlation_id=MSG, count=2))
    assert verdict is not None and verdict.code is Exit.OK
    assert verdict.event is not None and verdict.event["count"] == 2
    assert wait.seen == 3


def test_query_and_history_end_with_their_answer() -> None:
    for action, event in (("query", "state"), ("history", "history")):
        wait = rq.control(action, "inst-1").wait(MSG)
        verdict = wait.offer(ev(event, "01", correlation_id=MSG, status="RUNNING"))
        assert verdict is not None and verdict.code is Exit.OK
