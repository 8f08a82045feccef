"""Which message started an instance, carried inside the instance's own input.

The worker starts every instance with ``{"__dapr_workflow_worker__": {...}, "input": <yours>}``;
the hosting wrapper unwraps it before your workflow sees its input. Because the instance itself
records its origin, a redelivered start recognises the instance it created (even when the
first delivery's outcome was never seen), and the status events of one run keep their ids
when the engine re-executes it after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ENVELOPE_KEY = "__dapr_workflow_worker__"


@dataclass(frozen=True)
class Origin:
    source: str
    message_id: str
    generation: int = 0  # continue-as-new generations of the same run
    report_start: bool = False  # a delayed start: the workflow reports `started` itself
    # The id the message started: a rerun (`dapr workflow rerun`) copies the input, envelope
    # and all, into an instance of another id, which the worker did not start.
    instance_id: str | None = None
    # The W3C trace context of the message's handling (``traceparent``, ``tracestate``): the
    # status events the workflow reports later (`completed`, ...) join the message's trace,
    # also after a restart of the worker. Empty: none (and in envelopes written before it).
    trace: dict[str, str] = field(default_factory=dict, compare=False)

    def wrap(self, data: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "source": self.source,
            "message_id": self.message_id,
            "generation": self.generation,
            "report_start": self.report_start,
        }
        if self.instance_id is not None:
            meta["instance_id"] = self.instance_id
        if self.trace:
            meta["trace"] = dict(self.trace)
        return {ENVELOPE_KEY: meta, "input": data}

    def started(self, instance_id: str) -> bool:
        """Whether the worker's start message created ``instance_id`` (not a copy of it)."""
        return self.instance_id is None or self.instance_id == instance_id

    def next_generation(self) -> Origin:
        return replace(self, generation=self.generation + 1)

    def same_message(self, source: str, message_id: str) -> bool:
        return (self.source, self.message_id) == (source, message_id)

    def run_key(self) -> str:
        """Identifies one run of one instance: a key for its status event ids."""
        return f"{self.source}\x1f{self.message_id}\x1f{self.generation}"


def unwrap(data: Any) -> tuple[Origin | None, Any]:
    """(origin or None, the user's input). Inputs from elsewhere pass unchanged."""
    if isinstance(data, dict) and isinstance(data.get(ENVELOPE_KEY), dict):
        meta = data[ENVELOPE_KEY]
        origin = Origin(
            str(meta.get("source", "")),
            str(meta.get("message_id", "")),
            int(meta.get("generation", 0)),
            bool(meta.get("report_start", False)),
            str(meta["instance_id"]) if meta.get("instance_id") is not None else None,
            _trace(meta.get("trace")),
        )
        return origin, data.get("input")
    return None, data


def _trace(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        k: v for k, v in value.items() if k in ("traceparent", "tracestate") and isinstance(v, str)
    }
