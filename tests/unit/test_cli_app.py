"""wfctl's commands against a fake sidecar: arguments, what is published, exit codes, output."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.cli import app
from worker.cli.exitcodes import CliError, Exit
from worker.cli.sidecar import Address, Metadata, Received, publish_error

Answer = Callable[[str, dict[str, Any], str], list[dict[str, Any]]]


@dataclass
class FakeSidecar:
    """What the tests script: the worker's answers to each published message."""

    answer: Answer = lambda topic, body, message_id: []
    published: list[tuple[str, str, dict[str, Any], str, str]] = field(default_factory=list)
    publish_fails: Exception | None = None
    healthy: bool = True
    events: list[Received] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)


class FakeListener:
    def __init__(self, sidecar: FakeSidecar) -> None:
        self.sidecar = sidecar
        self.closed = False

    def get(self, timeout: float) -> Received | None:
        if self.sidecar.events:
            return self.sidecar.events.pop(0)
        return None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def sidecar(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSidecar]:
    fake = FakeSidecar()

    class FakeConnection:
        def __init__(self, address: Address, connect_timeout: float) -> None:
            fake.addresses.append(address)

        def wait_healthy(self, waiting: Any = None) -> None:
            if not fake.healthy:
                raise CliError(Exit.UNAVAILABLE, "no healthy Dapr sidecar")

        def metadata(self) -> Metadata:
            return Metadata("workflow-client", {"pubsub": "pubsub.redis"}, [])

        def check_pubsub(self, meta: Metadata, pubsub: str) -> str:
            return "pubsub.redis"

        def check_reaches_worker(self, *args: Any) -> None:
            pass

        def check_alone(self, meta: Metadata, *args: Any) -> Metadata:
            return meta

        def listen(self, pubsub: str, topic: str, kind: str) -> FakeListener:
            return FakeListener(fake)

        def publish(
            self, pubsub: str, topic: str, body: dict[str, Any], *, message_id: str, source: str
        ) -> None:
            if fake.publish_fails is not None:
                raise publish_error(fake.publish_fails, topic, "workflow-client")
            fake.published.append((pubsub, topic, body, message_id, source))
            for i, data in enumerate(fake.answer(topic, body, message_id)):
                fake.events.append(Received(f"{message_id}-{i}", data))

        def close(self) -> None:
            pass

    monkeypatch.setattr(app, "Connection", FakeConnection)
    for name in ("DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "DAPR_HTTP_ENDPOINT", "DAPR_GRPC_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield fake


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def wfctl(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = app.run(list(args), out=out, err=err)
    return Result(code, out.getvalue(), err.getvalue())


def at(second: int) -> str:
    return f"2026-11-30T10:00:{second:02d}Z"


def worker_completes(topic: str, body: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
    instance = body["instance_id"]
    return [
        {
            "event": "started",
            "instance_id": instance,
            "correlation_id": message_id,
            "occurred_at": at(1),
        },
        {"event": "completed", "instance_id": instance, "occurred_at": at(2), "output": "hi"},
    ]


def test_every_command_has_help_with_examples() -> None:
    top = wfctl("--help")
    assert top.code == 0 and "Exit codes:" in top.out
    for code in Exit:
        assert f"{code.value:>3}  {code.name.lower()}" in top.out
    for command in app.cli.commands:
        result = wfctl(command, "--help")
        assert result.code == 0, command
        assert "Examples:" in result.out, command
        assert "wfctl " + command in result.out, command


def test_version() -> None:
    result = wfctl("--version")
    assert result.code == 0 and result.out.startswith("wfctl, version ")


def test_usage_errors_exit_2(sidecar: FakeSidecar) -> None:
    assert wfctl("start").code == 2  # missing WORKFLOW
    assert wfctl("nonsense").code == 2
    assert wfctl("start", "w", "--until", "soon").code == 2
    purge = wfctl("purge")
    assert purge.code == 2 and "purge what?" in purge.err
    both = wfctl("purge", "a", "--all")
    assert both.code == 2
    assert wfctl("start", "w", "--timeout", "0").code == 2
    assert sidecar.published == []


def test_invalid_input_is_refused_before_any_sidecar_is_asked(sidecar: FakeSidecar) -> None:
    sidecar.healthy = False  # would be exit 7 if it were asked
    result = wfctl("start", "w", "--input", "{oops")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("wfctl: --input: the value is not valid JSON")
    assert len(result.err.strip().splitlines()) == 1


def test_start_publishes_the_message_and_prints_ids(sidecar: FakeSidecar) -> None:
    result = wfctl("start", "greeting_workflow", "--input", '{"name": "ana"}', "--id", "g-1")
    assert result.code == 0, result.err
    [(pubsub, topic, body, message_id, source)] = sidecar.published
    assert (pubsub, topic) == ("pubsub", "workflow.start")
    assert body == {"workflow": "greeting_workflow", "instance_id": "g-1", "input": {"name": "ana"}}
    assert result.json() == {
        "message_id": message_id,
        "topic": "workflow.start",
        "source": source,
        "instance_id": "g-1",
    }
    assert source.startswith("wfctl/")


def test_start_wait_prints_the_final_event_and_exits_0(sidecar: FakeSidecar) -> None:
    sidecar.answer = worker_completes
    result = wfctl("start", "greeting_workflow", "--wait")
    assert result.code == 0, result.err
    assert result.json()["event"] == "completed" and result.err == ""


@pytest.mark.parametrize(
    ("ending", "code", "line"),
    [
        (
            {"event": "failed", "failure": {"message": "boom", "type": "ValueError"}},
            Exit.FAILED,
            "wfctl: g-1 failed: ValueError: boom",
        ),
        ({"event": "terminated", "observed": True}, Exit.TERMINATED, "wfctl: g-1 was terminated"),
    ],
)
def test_a_bad_end_has_its_code_and_one_line_on_stderr(
    sidecar: FakeSidecar, ending: dict[str, Any], code: Exit, line: str
) -> None:
    def answer(topic: str, body: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
        return [
            {
                "event": "started",
                "instance_id": "g-1",
                "correlation_id": message_id,
                "occurred_at": at(1),
            },
            {"instance_id": "g-1", "occurred_at": at(2), **ending},
        ]

    sidecar.answer = answer
    result = wfctl("start", "w", "--id", "g-1", "--wait")
    assert result.code == code
    assert result.err.strip().startswith(line)
    assert result.json()["event"] == ending["event"]


@pytest.mark.parametrize(
    ("code", "line"),
    [
        (None, "wfctl: rejected: nope\n"),  # an older worker's: no code
        ("state_forbids", "wfctl: rejected (state_forbids): nope\n"),
        ("gave_up", "wfctl: rejected (gave_up): nope\n"),
    ],
)
def test_a_rejection_is_5_with_its_code_and_reason(
    sidecar: FakeSidecar, code: str | None, line: str
) -> None:
    rejected = {"event": "rejected", "occurred_at": at(1), "reason": "nope"}
    if code is not None:
        rejected["code"] = code
    sidecar.answer = lambda topic, body, message_id: [{**rejected, "correlation_id": message_id}]
    result = wfctl("suspend", "c-1", "--wait")
    assert result.code == Exit.REJECTED
    assert result.err == line
    assert result.json().get("code") == code


def test_timeout_is_6(sidecar: FakeSidecar) -> None:
    result = wfctl("start", "w", "--id", "g-1", "--wait", "--timeout", "0.3")
    assert result.code == Exit.TIMEOUT
    assert result.out == ""
    assert result.err.startswith("wfctl: timed out after 0.3s waiting for the start of w as g-1")
    assert "no answer seen" in result.err


def test_query_and_history_wait_by_default(sidecar: FakeSidecar) -> None:
    sidecar.answer = lambda topic, body, message_id: [
        {
            "event": "state" if body["action"] == "query" else "history",
            "instance_id": body["instance_id"],
            "correlation_id": message_id,
            "occurred_at": at(1),
            "status": "RUNNING",
        }
    ]
    assert wfctl("query", "c-1").json()["event"] == "state"
    assert wfctl("history", "c-1").json()["event"] == "history"
    assert "message_id" in wfctl("query", "c-1", "--no-wait").json()


def test_approve_and_reject_build_the_decision(sidecar: FakeSidecar) -> None:
    assert wfctl("approve", "o-1", "--by", "ana", "--comment", "ok").code == 0
    assert wfctl("reject", "o-1", "--by", "bo", "--reason", "too much").code == 0
    assert wfctl("approve", "o-1", "--data", '{"ticket": "CHG-1"}', "--event", "decision").code == 0
    bodies = [body for _, _, body, _, _ in sidecar.published]
    assert bodies == [
        {
            "instance_id": "o-1",
            "event_name": "approval_decision",
            "data": {"approved": True, "approver": "ana", "comment": "ok"},
        },
        {
            "instance_id": "o-1",
            "event_name": "approval_decision",
            "data": {"approved": False, "approver": "bo", "reason": "too much"},
        },
        {
            "instance_id": "o-1",
            "event_name": "decision",
            "data": {"approved": True, "ticket": "CHG-1"},
        },
    ]
    assert wfctl("approve", "o-1", "--data", "[1]").code == 2


def test_control_messages(sidecar: FakeSidecar) -> None:
    assert (
        wfctl("terminate", "c-1", "--reason", "r", "--output", '{"x": 1}', "--no-recursive").code
        == 0
    )
    assert wfctl("purge", "--older-than", "720h", "--status", "failed").code == 0
    assert wfctl("raise", "b-1", "go", "--data", "0").code == 0
    assert [(topic, body) for _, topic, body, _, _ in sidecar.published] == [
        (
            "workflow.control",
            {
                "action": "terminate",
                "instance_id": "c-1",
                "reason": "r",
                "output": {"x": 1},
                "recursive": False,
            },
        ),
        (
            "workflow.control",
            {"action": "purge", "older_than": "720h", "statuses": ["FAILED"], "recursive": True},
        ),
        ("workflow.approval", {"instance_id": "b-1", "event_name": "go", "data": 0}),
    ]


def test_global_options_before_or_after_the_command(sidecar: FakeSidecar) -> None:
    assert wfctl("--source", "ci/a", "--topic-prefix", "t.", "start", "w").code == 0
    assert (
        wfctl("start", "w", "--source", "ci/b", "--pubsub", "bus", "--dapr-http-port", "4000").code
        == 0
    )
    (pubsub_a, topic_a, _, _, source_a), (pubsub_b, topic_b, _, _, source_b) = sidecar.published
    assert (pubsub_a, topic_a, source_a) == ("pubsub", "t.workflow.start", "ci/a")
    assert (pubsub_b, topic_b, source_b) == ("bus", "workflow.start", "ci/b")
    assert sidecar.addresses[-1].http_url == "http://127.0.0.1:4000"


def test_the_sidecar_address_comes_from_dapr_variables(
    sidecar: FakeSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAPR_HTTP_PORT", "3600")
    monkeypatch.setenv("DAPR_GRPC_PORT", "50009")
    assert wfctl("start", "w").code == 0
    assert sidecar.addresses[-1].http_url == "http://127.0.0.1:3600"
    assert sidecar.addresses[-1].grpc_address == "127.0.0.1:50009"
    monkeypatch.setenv("DAPR_GRPC_ENDPOINT", "https://dapr.example:443")
    assert wfctl("start", "w").code == 0
    assert sidecar.addresses[-1].grpc_address == "https://dapr.example:443"


def test_unavailable_and_forbidden(sidecar: FakeSidecar) -> None:
    sidecar.healthy = False
    assert wfctl("start", "w").code == Exit.UNAVAILABLE
    sidecar.healthy = True

    class Denied(Exception):
        def code(self) -> Any:
            return type("Code", (), {"name": "PERMISSION_DENIED"})()

        def details(self) -> str:
            return "topic workflow.start is not allowed for app id workflow-client"

    sidecar.publish_fails = Denied()
    result = wfctl("start", "w")
    assert result.code == Exit.FORBIDDEN
    assert "publishingScopes" in result.err and len(result.err.strip().splitlines()) == 1


def test_watch_filters_and_prints_json_lines(sidecar: FakeSidecar) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    events = [
        {"event": "started", "instance_id": "a", "workflow": "w", "occurred_at": now},
        {"event": "started", "instance_id": "b", "workflow": "w", "occurred_at": now},
        {"event": "completed", "instance_id": "a", "workflow": "w", "occurred_at": now},
        {
            "event": "completed",
            "instance_id": "a",
            "workflow": "w",
            "occurred_at": "2020-01-01T00:00:00Z",
        },
    ]
    sidecar.events = [Received(str(i), e) for i, e in enumerate(events)]
    sidecar.events.append(Received("2", events[2]))  # a redelivery: shown once
    result = wfctl("watch", "--instance", "a", "--duration", "1")
    assert result.code == 0, result.err
    assert [json.loads(line) for line in result.out.splitlines()] == [events[0], events[2]]
    sidecar.events = [Received(str(i), e) for i, e in enumerate(events)]
    text = wfctl("watch", "--event", "completed", "--output", "text", "--max-events", "1")
    assert text.code == 0
    [line] = text.out.splitlines()
    assert "completed" in line and " a " in line and "workflow=w" in line
