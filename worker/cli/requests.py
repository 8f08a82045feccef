"""Each command's message, validated with the worker's own models before it is published, and
what waiting for its outcome means."""

from __future__ import annotations

import json
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from worker.actions import BY_NAME, control_adapter
from worker.cli.exitcodes import CliError, Exit
from worker.cli.outcome import Wait
from worker.events import EventType
from worker.messages import Duration, RaiseEvent, StartWorkflow
from worker.topics import APPROVAL, CONTROL, START, Topic

Until = Literal["accepted", "started", "finished", "done"]

_DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)
_ID_NAMESPACE = uuid.UUID("9d3c6a51-6f0e-4f57-b4a6-8a1e2f3c4d5e")


@dataclass(frozen=True)
class Request:
    """One message to publish, and how its outcome shows on the status topic."""

    topic: Topic
    body: dict[str, Any]
    instance_id: str | None
    anchors: frozenset[EventType]
    done: frozenset[EventType]  # empty: wait for the instance's end
    bulk: bool = False

    def wait(self, message_id: str) -> Wait:
        return Wait(
            message_id=message_id,
            anchors=self.anchors,
            done=self.done,
            instance_id=self.instance_id,
            bulk=self.bulk,
        )

    def describe(self) -> str:
        if self.topic is START:
            return f"start of {self.body['workflow']} as {self.instance_id}"
        action = self.body.get("action") or f"event {self.body.get('event_name')}"
        target = self.instance_id or "finished instances"
        return f"{action} of {target}"


# -- values from the command line --------------------------------------------------------


def json_value(text: str, option: str) -> Any:
    """JSON given inline, as @file, or as @- / - (stdin)."""
    source = text
    where = "the value"
    if text in ("-", "@-"):
        source, where = sys.stdin.read(), "stdin"
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            source, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(Exit.USAGE, f"{option}: cannot read {path}: {error}") from error
    try:
        return json.loads(source)
    except ValueError as error:
        hint = (
            f" (a string is JSON in quotes: '\"{text}\"')"
            if where == "the value" and not text.lstrip().startswith(("{", "[", '"'))
            else ""
        )
        raise CliError(
            Exit.USAGE,
            f"{option}: {where} is not valid JSON: {error}{hint}. Give JSON inline "
            "('{\"amount\": 5000}'), @file.json, or - for stdin",
        ) from error


def seconds(text: str, option: str) -> float:
    """A duration: seconds ("90", "1.5") or Go style ("10m", "1h30m") or ISO 8601."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        return _DURATION.validate_python(value).total_seconds()
    except ValidationError as error:
        raise CliError(
            Exit.USAGE,
            f'{option}: {text!r} is not a duration: give seconds ("90") or "10m", "1h30m"',
        ) from error


def start_time(text: str, now: datetime | None = None) -> str:
    """--start-at: RFC 3339 with an offset, or "+DURATION" from now."""
    value = text.strip()
    if value.startswith("+"):
        delay = seconds(value[1:], "--start-at")
        return ((now or datetime.now(UTC)) + timedelta(seconds=delay)).isoformat()
    return value  # validated by the message model (an offset is required)


def derived_instance_id(workflow: str, message_id: str | None) -> str:
    """An instance id for a start without --id: random, or, for a given --message-id, the same
    every time (a retried pipeline step names the same instance)."""
    if message_id is None:
        return f"{workflow}-{uuid.uuid4().hex[:12]}"
    return f"{workflow}-{uuid.uuid5(_ID_NAMESPACE, message_id).hex[:20]}"


# -- messages ----------------------------------------------------------------------------


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _validated(model: type[BaseModel] | TypeAdapter[Any], body: dict[str, Any]) -> None:
    try:
        if isinstance(model, TypeAdapter):
            model.validate_python(body)
        else:
            model.model_validate(body)
    except ValidationError as error:
        raise CliError(
            Exit.USAGE, f"the worker would reject this message: {_explain(error)}"
        ) from error


def _until(until: Until, event: EventType, allowed: tuple[Until, ...]) -> frozenset[EventType]:
    if until not in allowed:
        raise CliError(Exit.USAGE, f"--until {until} is not for this command ({'/'.join(allowed)})")
    return frozenset() if until == "finished" else frozenset({event})


def start(
    workflow: str,
    *,
    input_: Any = None,
    has_input: bool = False,
    instance_id: str | None = None,
    start_at: str | None = None,
    replace: bool = False,
    until: Until = "finished",
    message_id: str | None = None,
) -> Request:
    instance = instance_id or derived_instance_id(workflow, message_id)
    body: dict[str, Any] = {"workflow": workflow, "instance_id": instance}
    if has_input:
        body["input"] = input_
    if start_at is not None:
        body["start_at"] = start_time(start_at)
    if replace:
        body["replace"] = True
    _validated(StartWorkflow, body)
    accepted = frozenset({EventType.SCHEDULED, EventType.STARTED})
    done = {
        "accepted": accepted,
        "started": frozenset({EventType.STARTED}),
        "finished": frozenset(),
    }.get(until)
    if done is None:
        raise CliError(Exit.USAGE, f"--until {until} is not for start (accepted/started/finished)")
    return Request(START, body, instance, accepted, done)


def raise_event(
    instance_id: str, event_name: str, data: Any, *, has_data: bool, until: Until = "done"
) -> Request:
    body: dict[str, Any] = {"instance_id": instance_id, "event_name": event_name}
    if has_data:
        body["data"] = data
    _validated(RaiseEvent, body)
    done = _until(until, EventType.EVENT_RAISED, ("done", "finished"))
    return Request(APPROVAL, body, instance_id, frozenset({EventType.EVENT_RAISED}), done)


def control(action: str, instance_id: str | None, until: Until = "done", **fields: Any) -> Request:
    body: dict[str, Any] = {"action": action}
    if instance_id is not None:
        body["instance_id"] = instance_id
    body.update({k: v for k, v in fields.items() if v is not None})
    _validated(control_adapter, body)
    declared = BY_NAME[action]
    event = declared.event
    if instance_id is None:  # the action's bulk message (validated: purge)
        return Request(CONTROL, body, None, frozenset(), frozenset({event}), bulk=True)
    allowed: tuple[Until, ...] = ("done", "finished") if declared.follows else ("done",)
    done = _until(until, event, allowed)
    return Request(CONTROL, body, instance_id, frozenset({event}), done)
