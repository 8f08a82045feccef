"""Turns the CloudEvent a subscription receives into a validated message model."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from worker.outcomes import RejectCode, Rejected

M = TypeVar("M")

# Content types whose data is read as JSON. Dapr uses text/plain when a publisher gives none.
_JSON_TYPES = ("application/json", "text/json", "text/plain", "")
_INVALID = RejectCode.INVALID_MESSAGE


@dataclass(frozen=True)
class Inbound:
    """One delivered message, as the sidecar handed it over."""

    topic: str
    message_id: str
    source: str
    content_type: str
    data: bytes
    first_seen: float | None = None  # epoch seconds; set when it comes from the parking lot
    event_type: str = ""  # the CloudEvent's type, kept for a dead letter
    # W3C trace context the CloudEvent carried (its traceparent/tracestate extensions)
    traceparent: str = ""
    tracestate: str = ""

    def describe(self) -> str:
        return f"message {self.message_id} from {self.source or '?'} on {self.topic}"

    def to_record(self) -> dict[str, Any]:
        """The message as JSON-ready data, to keep in the state store (`from_record`)."""
        record: dict[str, Any] = {
            "topic": self.topic,
            "source": self.source,
            "message_id": self.message_id,
            "content_type": self.content_type,
            "type": self.event_type,
            "data": base64.b64encode(self.data).decode(),
        }
        if self.first_seen is not None:
            record["first_seen"] = self.first_seen
        if self.traceparent:  # its later handling continues the message's trace
            record["traceparent"] = self.traceparent
            record["tracestate"] = self.tracestate
        return record

    @staticmethod
    def from_record(record: dict[str, Any]) -> Inbound:
        first_seen = record.get("first_seen")
        return Inbound(
            topic=record["topic"],
            message_id=record["message_id"],
            source=record["source"],
            content_type=record["content_type"],
            data=base64.b64decode(record["data"]),
            first_seen=float(first_seen) if first_seen is not None else None,
            event_type=record.get("type", ""),
            traceparent=str(record.get("traceparent") or ""),
            tracestate=str(record.get("tracestate") or ""),
        )

    def seen_first_at(self, first_seen: float) -> Inbound:
        return replace(self, first_seen=first_seen)


def _json_body(message: Inbound) -> Any:
    content_type = message.content_type.split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise Rejected(
            f"unsupported content type {message.content_type!r}: send application/json",
            code=_INVALID,
        )
    try:
        text = message.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"data is not UTF-8 text: {error}", code=_INVALID) from error
    try:
        body = json.loads(text)
        if isinstance(body, str) and body.lstrip().startswith("{"):
            body = json.loads(body)  # JSON published as a text/plain string
    except ValueError as error:
        raise Rejected(f"data is not valid JSON: {error}", code=_INVALID) from error
    if not isinstance(body, dict):
        raise Rejected(f"data must be a JSON object, got {type(body).__name__}", code=_INVALID)
    return body


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "invalid message: " + "; ".join(parts)


def parse(message: Inbound, model: type[BaseModel] | TypeAdapter[Any]) -> Any:
    """Validate ``message`` against ``model``; any problem is a `Rejected` with the reason."""
    body = _json_body(message)
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(body)
        return model.model_validate(body)
    except ValidationError as error:
        raise Rejected(_explain(error), code=_INVALID) from error
