"""Every `rejected` event carries its code, and what branches on a rejection reads the code.

Each way the worker rejects a message is run through the real line (pipeline and handlers, a
fake gateway and fake Dapr clients) and its `rejected` event is checked for the code; the
metrics label, the console's HTTP status and wfctl's exit code are then derived from that
event, as each of them does it. The tables of the console and of wfctl must decide every code.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.status_contract import contract_errors, schema_errors
from tests.unit.fakes import FakeGateway, FakePublishClient, FakeRpcError, FakeStateClient, state
from tests.unit.test_pipeline import cloud_event
from worker.cli import requests as rq
from worker.cli.exitcodes import Exit
from worker.cli.outcome import REJECTION_EXIT, describe, rejection_exit
from worker.config import Settings
from worker.console.actions import REJECTION_STATUS, Outcome, rejection_status
from worker.events import EventType, RejectCode, StatusEvent
from worker.handlers.approval import ApprovalHandler
from worker.handlers.control import ControlHandler
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline, TopicHandler, rejection
from worker.handlers.start import StartHandler
from worker.idempotency import IdempotencyStore
from worker.instruments import Instruments
from worker.outcomes import Rejected, Transient, raise_classified
from worker.publisher import Outbound, StatusPublisher
from worker.purges import Purges
from worker.schemas import documents

ROOT = Path(__file__).resolve().parents[2]
START, APPROVAL, CONTROL = "workflow.start", "workflow.approval", "workflow.control"
WORKFLOWS = ["approval_workflow"]


@dataclass
class Labels(Instruments):
    """Records the labels the line reports for each message it is done with."""

    handled: list[tuple[str, str, str]] = field(default_factory=list)

    def message_handled(self, topic: str, outcome: str, reason: str, seconds: float) -> None:
        self.handled.append((topic, outcome, reason))


@dataclass
class Gateway(FakeGateway):
    """A fake gateway whose start fails with ``start_error``, as the sidecar would refuse."""

    start_error: Exception | None = None

    def start(self, workflow: str, instance_id: str, data: Any, start_at: datetime | None) -> None:
        super().start(workflow, instance_id, data, start_at)
        if isinstance(self.start_error, grpc.RpcError):
            raise_classified(self.start_error, f"start {instance_id}", instance_id)
        if self.start_error is not None:
            raise self.start_error


@dataclass
class Line:
    pipeline: Pipeline
    handlers: dict[str, TopicHandler]
    pubsub: FakePublishClient
    labels: Labels
    purges: Purges

    def deliver(self, topic: str, body: bytes, content_type: str = "application/json") -> str:
        event = cloud_event("m-1", body, content_type=content_type)
        return str(self.pipeline(topic, self.handlers[topic], event).status.name)


def line(gateway: Gateway | None = None, *, max_bytes: int = 1_000_000, attempts: int = 3) -> Line:
    gateway = gateway or Gateway()
    gateway.states.update(
        {"running": state("running", "RUNNING"), "done": state("done", "COMPLETED")}
    )
    store_client, pubsub, labels = FakeStateClient(), FakePublishClient(), Labels()
    store = IdempotencyStore(store_client, "statestore", ttl_seconds=3600, lease_seconds=60)
    purges = Purges(store_client, "statestore", ttl_seconds=3600)
    publisher = StatusPublisher(pubsub, Settings(app_id="worker"))
    pipeline = Pipeline(store, publisher, attempts, max_bytes, purges=purges, instruments=labels)
    handlers: dict[str, TopicHandler] = {
        START: StartHandler(gateway, WORKFLOWS),  # type: ignore[arg-type]
        APPROVAL: ApprovalHandler(gateway),  # type: ignore[arg-type]
        CONTROL: ControlHandler(gateway, purges=purges),  # type: ignore[arg-type]
    }
    return Line(pipeline, handlers, pubsub, labels, purges)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class Case:
    """One way to be rejected: a message on a topic, against a line set up by ``setup``."""

    code: RejectCode
    topic: str
    body: bytes
    content_type: str = "application/json"
    setup: Callable[[Line], None] = lambda _: None
    gateway: Callable[[], Gateway] = Gateway
    max_bytes: int = 1_000_000
    attempts: int = 3


def _purged(target: Line) -> None:
    target.purges.note("gone", datetime(2026, 12, 1, tzinfo=UTC))


CASES = {
    "not JSON": Case(RejectCode.INVALID_MESSAGE, START, b"{not json"),
    "not UTF-8": Case(RejectCode.INVALID_MESSAGE, CONTROL, b'{"x": "\xff"}'),
    "wrong content type": Case(RejectCode.INVALID_MESSAGE, START, b"{}", "text/plain"),
    "not the schema": Case(RejectCode.INVALID_MESSAGE, CONTROL, _json({"action": "explode"})),
    "too large": Case(
        RejectCode.TOO_LARGE, START, _json({"workflow": "approval_workflow"}), max_bytes=10
    ),
    "workflow not allowed": Case(RejectCode.UNKNOWN_WORKFLOW, START, _json({"workflow": "nope"})),
    "workflow not registered (sidecar)": Case(
        RejectCode.UNKNOWN_WORKFLOW,
        START,
        _json({"workflow": "approval_workflow"}),
        gateway=lambda: Gateway(
            start_error=FakeRpcError(grpc.StatusCode.UNKNOWN, "no orchestrator named x")
        ),
    ),
    "unknown instance (control)": Case(
        RejectCode.UNKNOWN_INSTANCE, CONTROL, _json({"action": "suspend", "instance_id": "nope"})
    ),
    "unknown instance (approval)": Case(
        RejectCode.UNKNOWN_INSTANCE, APPROVAL, _json({"instance_id": "nope", "data": True})
    ),
    "purged instance": Case(
        RejectCode.PURGED,
        CONTROL,
        _json({"action": "query", "instance_id": "gone"}),
        setup=_purged,
    ),
    "start of a running id": Case(
        RejectCode.INSTANCE_EXISTS,
        START,
        _json({"workflow": "approval_workflow", "instance_id": "running"}),
    ),
    "start of a finished id without replace": Case(
        RejectCode.INSTANCE_EXISTS,
        START,
        _json({"workflow": "approval_workflow", "instance_id": "done"}),
    ),
    "suspend a finished instance": Case(
        RejectCode.STATE_FORBIDS, CONTROL, _json({"action": "suspend", "instance_id": "done"})
    ),
    "purge a running instance": Case(
        RejectCode.STATE_FORBIDS, CONTROL, _json({"action": "purge", "instance_id": "running"})
    ),
    "approve a finished instance": Case(
        RejectCode.STATE_FORBIDS, APPROVAL, _json({"instance_id": "done", "data": True})
    ),
    "refused by the sidecar": Case(
        RejectCode.SIDECAR_REFUSED,
        START,
        _json({"workflow": "approval_workflow"}),
        gateway=lambda: Gateway(
            start_error=FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        ),
    ),
    "gave up": Case(
        RejectCode.GAVE_UP,
        START,
        _json({"workflow": "approval_workflow"}),
        gateway=lambda: Gateway(start_error=Transient("sidecar unreachable")),
        attempts=1,
    ),
    "no code given": Case(
        RejectCode.OTHER,
        START,
        _json({"workflow": "approval_workflow"}),
        gateway=lambda: Gateway(start_error=Rejected("refused, no code given")),
    ),
}


def run(case: Case) -> tuple[Line, dict[str, Any]]:
    """Deliver the case's message; the data of the one `rejected` event it caused."""
    target = line(case.gateway(), max_bytes=case.max_bytes, attempts=case.attempts)
    case.setup(target)
    assert target.deliver(case.topic, case.body, case.content_type) == "drop"
    [rejected] = target.pubsub.bodies()
    assert rejected["event"] == "rejected", rejected
    return target, rejected


def test_every_code_has_a_rejection_path_here() -> None:
    assert {case.code for case in CASES.values()} == set(RejectCode)


@pytest.mark.parametrize("name", CASES)
def test_the_rejected_event_carries_the_code_and_every_reader_takes_it(name: str) -> None:
    case = CASES[name]
    target, rejected = run(case)
    assert rejected["code"] == case.code.value, rejected
    assert contract_errors(rejected) == []
    # metrics: the label is the event's code
    assert target.labels.handled == [(case.topic, "drop", case.code.value)]
    # wfctl: the exit code and the line on stderr
    event = StatusEvent.model_validate(rejected)
    assert event.code is case.code
    assert describe(event).startswith(f"rejected ({case.code.value}): ")
    wait = rq.start("approval_workflow", instance_id="x").wait("m-1")
    verdict = wait.offer(rejected)
    assert verdict is not None and verdict.code is REJECTION_EXIT[case.code]
    # the console: the status of the same outcome
    outbound = Outbound("id-1", event)
    outcome = Outcome("rejected", "m-1", [outbound], rejected["reason"])
    assert outcome.code is case.code
    assert outcome.http_status == REJECTION_STATUS[case.code]
    assert outcome.to_json()["code"] == case.code.value


# --- the tables: every code decided, read from the code, never from the text -------------------


def test_the_console_has_an_http_status_for_every_code() -> None:
    assert set(REJECTION_STATUS) == set(RejectCode), "decide the HTTP status of the new code"
    assert REJECTION_STATUS == {
        RejectCode.INVALID_MESSAGE: 422,
        RejectCode.TOO_LARGE: 422,
        RejectCode.UNKNOWN_WORKFLOW: 422,
        RejectCode.UNKNOWN_INSTANCE: 404,
        RejectCode.PURGED: 404,
        RejectCode.INSTANCE_EXISTS: 409,
        RejectCode.STATE_FORBIDS: 409,
        RejectCode.SIDECAR_REFUSED: 422,
        RejectCode.GAVE_UP: 503,
        RejectCode.OTHER: 422,
    }
    assert rejection_status(None) == 422  # a rejection without a code (none of this worker's)


def test_wfctl_has_an_exit_code_for_every_code() -> None:
    assert set(REJECTION_EXIT) == set(RejectCode), "decide wfctl's exit code for the new code"
    assert set(REJECTION_EXIT.values()) == {Exit.REJECTED}


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (RejectCode.STATE_FORBIDS, "unknown instance order-1"),
        (RejectCode.INVALID_MESSAGE, "instance already exists, gave up after 3 attempts"),
        (RejectCode.UNKNOWN_INSTANCE, "already finished"),
    ],
)
def test_the_reason_text_decides_nothing(code: RejectCode, reason: str) -> None:
    """A reason that reads like another code changes neither the status nor the exit code."""
    event = StatusEvent(
        event=EventType.REJECTED, reason=reason, code=code, occurred_at=datetime.now(UTC)
    )
    outcome = Outcome("rejected", "m-1", [Outbound("id-1", event)], reason)
    assert outcome.http_status == REJECTION_STATUS[code]
    assert rejection_exit(event) is REJECTION_EXIT[code]


def test_a_rejection_without_a_code_from_an_older_worker_is_still_understood() -> None:
    data = {
        "event": "rejected",
        "reason": "unknown instance x",
        "occurred_at": "2026-12-01T00:00:00Z",
    }
    event = StatusEvent.model_validate(data)
    assert event.code is None
    assert rejection_exit(event) is Exit.REJECTED
    assert describe(event) == "rejected: unknown instance x"
    outcome = Outcome("rejected", "m-1", [Outbound("id-1", event)], event.reason)
    assert (outcome.code, outcome.http_status) == (RejectCode.OTHER, 422)
    assert schema_errors(data) == []  # the schema still takes it
    assert contract_errors(data) == ["code: a rejected event without its code"]  # ours never


def test_a_code_this_version_does_not_know_reads_as_other() -> None:
    """A newer worker may add codes: wfctl and the console still take its rejections."""
    data = {"event": "rejected", "code": "brand_new", "occurred_at": "2026-12-01T00:00:00Z"}
    event = StatusEvent.model_validate(data)
    assert event.code is RejectCode.OTHER
    wait = rq.control("suspend", "x").wait("m-1")
    verdict = wait.offer({**data, "correlation_id": "m-1"})
    assert verdict is not None and verdict.code is Exit.REJECTED


def test_codes_are_published_additively() -> None:
    """`code` is optional in the schema and nothing forbids unknown fields, so consumers of
    the schema before it are unaffected; the codes are the enum's values."""
    schema = documents()["workflow.status.schema.json"]
    assert "code" not in schema.get("required", [])
    assert schema.get("additionalProperties", True) is not False
    assert schema["$defs"]["RejectCode"]["enum"] == [c.value for c in RejectCode]
    asyncapi = documents()["asyncapi.json"]["components"]["schemas"]
    assert asyncapi["RejectCode"]["enum"] == [c.value for c in RejectCode]


def test_a_rejection_is_built_only_by_the_pipelines_rejection() -> None:
    """No `rejected` event is made anywhere else, so none can go out without its code
    (`rejection` requires it)."""
    allowed = ROOT / "worker" / "handlers" / "pipeline.py"
    makers = []
    for path in sorted((ROOT / "worker").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            arguments = [*node.args, *(k.value for k in node.keywords)]
            for argument in arguments:
                if ast.unparse(argument) == "EventType.REJECTED":
                    makers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    builder = next(
        n
        for n in ast.walk(ast.parse(allowed.read_text()))
        if isinstance(n, ast.FunctionDef) and n.name == "rejection"
    )
    inside = {
        f"{allowed.relative_to(ROOT)}:{n.lineno}"
        for n in ast.walk(builder)
        if isinstance(n, ast.Call)
    }
    assert makers and set(makers) <= inside, makers


def test_rejection_requires_a_code() -> None:
    message = Inbound("t", "m-1", "tests", "application/json", b"{}")
    made = rejection(message, "why", code=RejectCode.TOO_LARGE)
    assert made.event.code is RejectCode.TOO_LARGE
    with pytest.raises(TypeError):
        rejection(message, "why")  # type: ignore[call-arg]


def test_the_docs_table_of_codes_is_the_one_the_code_uses() -> None:
    """docs/concepts/messages.md, "Rejection codes": one row per code, with the console's
    status and wfctl's exit code as the tables here decide them."""
    text = (ROOT / "docs" / "concepts" / "messages.md").read_text()
    table = text[text.index("| `code` | why | console | wfctl |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = (int(cells[-2]), int(cells[-1]))
    assert rows == {
        code.value: (REJECTION_STATUS[code], int(REJECTION_EXIT[code])) for code in RejectCode
    }
