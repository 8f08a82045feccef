"""wfctl's input: JSON values, durations, and messages validated by the worker's own models."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.cli import requests as rq
from worker.cli.exitcodes import CliError, Exit
from worker.events import EventType


def test_json_inline_from_a_file_and_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rq.json_value('{"amount": 5000}', "--input") == {"amount": 5000}
    assert rq.json_value("false", "--data") is False
    assert rq.json_value('"text"', "--input") == "text"
    order = tmp_path / "order.json"
    order.write_text('{"order_id": "7"}')
    assert rq.json_value(f"@{order}", "--input") == {"order_id": "7"}
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]"))
    assert rq.json_value("-", "--input") == [1, 2]


def test_invalid_json_is_a_usage_error_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CliError) as caught:
        rq.json_value("ana", "--input")
    assert caught.value.code is Exit.USAGE
    assert "--input: the value is not valid JSON" in caught.value.message
    assert "'\"ana\"'" in caught.value.message  # how to give a string
    with pytest.raises(CliError) as caught:
        rq.json_value(f"@{tmp_path / 'missing.json'}", "--input")
    assert caught.value.code is Exit.USAGE and "cannot read" in caught.value.message
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(CliError) as caught:
        rq.json_value(f"@{bad}", "--input")
    assert f"{bad} is not valid JSON" in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90", 90.0), ("1.5", 1.5), ("10m", 600.0), ("1h30m", 5400.0), ("P1D", 86400.0)],
)
def test_durations(text: str, expected: float) -> None:
    assert rq.seconds(text, "--timeout") == expected


def test_a_bad_duration_is_a_usage_error() -> None:
    with pytest.raises(CliError) as caught:
        rq.seconds("soon", "--timeout")
    assert caught.value.code is Exit.USAGE and "--timeout: 'soon' is not a duration" in str(
        caught.value
    )


def test_start_at_relative_and_absolute() -> None:
    now = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert rq.start_time("+10m", now) == "2026-11-30T10:10:00+00:00"
    assert rq.start_time("2026-12-01T09:00:00Z") == "2026-12-01T09:00:00Z"


def test_a_start_names_its_instance_before_it_is_published() -> None:
    request = rq.start("greeting_workflow", input_="ana", has_input=True)
    assert request.instance_id is not None
    assert request.instance_id.startswith("greeting_workflow-")
    assert request.body == {
        "workflow": "greeting_workflow",
        "instance_id": request.instance_id,
        "input": "ana",
    }
    # A retried step with the same --message-id names the same instance.
    first = rq.start("greeting_workflow", message_id="ci-42").instance_id
    assert first == rq.start("greeting_workflow", message_id="ci-42").instance_id
    assert first != rq.start("greeting_workflow", message_id="ci-43").instance_id


def test_input_null_is_sent_only_when_given() -> None:
    assert "input" not in rq.start("w", instance_id="a").body
    assert rq.start("w", instance_id="a", input_=None, has_input=True).body["input"] is None


def test_messages_the_worker_would_reject_are_usage_errors() -> None:
    with pytest.raises(CliError) as caught:
        rq.start("greeting_workflow", instance_id="has space")
    assert caught.value.code is Exit.USAGE
    assert caught.value.message.startswith("the worker would reject this message: instance_id")
    with pytest.raises(CliError):
        rq.start("greeting_workflow", instance_id="a", start_at="tomorrow")
    with pytest.raises(CliError):
        rq.start("9starts-with-a-digit")
    with pytest.raises(CliError):
        rq.control("purge", None, older_than="-5m")


def test_until_choices_per_command() -> None:
    assert rq.start("w", instance_id="a", until="finished").done == frozenset()
    assert rq.start("w", instance_id="a", until="started").done == {EventType.STARTED}
    assert rq.start("w", instance_id="a", until="accepted").done == {
        EventType.SCHEDULED,
        EventType.STARTED,
    }
    assert rq.control("resume", "a", until="finished").done == frozenset()
    with pytest.raises(CliError) as caught:
        rq.control("suspend", "a", until="finished")
    assert caught.value.code is Exit.USAGE


def test_bulk_and_single_purge() -> None:
    single = rq.control("purge", "a", recursive=True)
    assert single.body == {"action": "purge", "instance_id": "a", "recursive": True}
    assert not single.bulk and single.done == {EventType.PURGED}
    bulk = rq.control("purge", None, older_than="720h", statuses=["FAILED"])
    assert bulk.bulk and bulk.instance_id is None
    assert bulk.body == {"action": "purge", "older_than": "720h", "statuses": ["FAILED"]}


def test_describe() -> None:
    assert rq.start("w", instance_id="a").describe() == "start of w as a"
    assert rq.control("suspend", "a").describe() == "suspend of a"
    assert rq.raise_event("a", "go", 1, has_data=True).describe() == "event go of a"
    assert rq.control("purge", None, statuses=["FAILED"]).describe() == (
        "purge of finished instances"
    )
