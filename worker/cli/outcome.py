"""What a wait is waiting for, and how the status events that come in end it.

Pure logic, no I/O: `Wait.offer` takes each status event as it arrives and returns a `Verdict`
once the outcome is known.

Matching, in this order:

1. An event whose ``correlation_id`` is the id of the message wfctl published is the handler's
   answer: ``rejected`` ends the wait (exit code 5 for every ``code``, see `REJECTION_EXIT`);
   the expected event (``started`` for a start, ``suspended`` for a suspend, ...) is done, or,
   when the wait follows the instance to its end, the *anchor*.
2. After the anchor, events of the same instance count whoever caused them (``observed`` ones
   too): ``completed`` / ``failed`` / ``terminated`` end the wait with 0 / 3 / 4. Only events
   that occurred at or after the anchor count, so what a stream replays of an earlier run under
   the same instance id (a ``--replace`` start) is not taken for this one's outcome. Events of
   the instance that arrive before the anchor are kept until it comes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from worker.cli.exitcodes import Exit
from worker.events import ENDS, EventType, RejectCode, StatusEvent

ENDINGS: dict[EventType, Exit] = {
    end: Exit.OK if end is EventType.COMPLETED else Exit[end.name] for end in ENDS
}
"""The exit code of each end of an instance (`worker.events.ENDS`): 0 for completed, else the
code named like the event (failed 3, terminated 4)."""

REJECTION_EXIT: dict[RejectCode, Exit] = {
    RejectCode.INVALID_MESSAGE: Exit.REJECTED,
    RejectCode.TOO_LARGE: Exit.REJECTED,
    RejectCode.UNKNOWN_WORKFLOW: Exit.REJECTED,
    RejectCode.UNKNOWN_INSTANCE: Exit.REJECTED,
    RejectCode.PURGED: Exit.REJECTED,
    RejectCode.INSTANCE_EXISTS: Exit.REJECTED,
    RejectCode.STATE_FORBIDS: Exit.REJECTED,
    RejectCode.SIDECAR_REFUSED: Exit.REJECTED,
    RejectCode.GAVE_UP: Exit.REJECTED,  # dropped too; the same request may succeed later
    RejectCode.OTHER: Exit.REJECTED,
}
"""The exit code of a rejection, by the `rejected` event's code (never its reason's text).
Every code is 5 today: the message was dropped, whatever the cause, and the exit codes are
stable; a step that must tell causes apart reads ``code`` from the event wfctl prints. A unit
test fails when a code has no row here."""


def rejection_exit(event: StatusEvent) -> Exit:
    """The exit code of a `rejected` event (one without a code, from an older worker: 5)."""
    return REJECTION_EXIT[event.code or RejectCode.OTHER]


_KEPT_BEFORE_ANCHOR = 200  # events of the instance held until the anchor arrives


def parse_status(data: Any) -> StatusEvent | None:
    """The status event in a CloudEvent's data, or None when it is not one."""
    if not isinstance(data, dict):
        return None
    try:
        return StatusEvent.model_validate(data)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Verdict:
    """How a wait ended: the exit code, the event that decided it (printed as JSON), and, when
    the code is not 0, the line for stderr."""

    code: Exit
    event: dict[str, Any] | None
    summary: str = ""


def describe(event: StatusEvent) -> str:
    """One line about an event that ends a wait badly, for stderr."""
    who = event.instance_id or "bulk request"
    if event.event is EventType.REJECTED:
        code = f" ({event.code.value})" if event.code is not None else ""
        return f"rejected{code}: {event.reason or 'no reason given'}"
    if event.event is EventType.FAILED:
        failure = event.failure
        if failure is None:
            why = "no failure details"
        else:
            why = f"{failure.type}: {failure.message}" if failure.type else failure.message
        return f"{who} failed: {why}"
    if event.event is EventType.TERMINATED:
        by = " (by someone else)" if event.observed else ""
        reason = f": {event.reason}" if event.reason else ""
        return f"{who} was terminated{by}{reason}"
    return f"{who}: {event.event.value}"


@dataclass
class Wait:
    """One message's outcome, as the status topic tells it.

    ``anchors``: correlated events that show the message took effect on ``instance_id`` (the
    first one anchors the wait: the instance's later events count from its time on).
    ``done``: events that end the wait with 0 (correlated, or of the instance after the
    anchor); empty to wait for the instance's end. Once anchored, the instance's
    ``completed`` / ``failed`` / ``terminated`` always end the wait. ``bulk``: the done event
    is a bulk summary (no instance id); the same message's per-instance events show progress.
    """

    message_id: str
    anchors: frozenset[EventType]
    done: frozenset[EventType]
    instance_id: str | None = None
    bulk: bool = False
    anchor: StatusEvent | None = None
    last: StatusEvent | None = None  # the newest event about this wait, for progress
    seen: int = 0  # events that concerned this wait
    _early: deque[tuple[StatusEvent, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=_KEPT_BEFORE_ANCHOR)
    )

    @property
    def follows(self) -> bool:
        """Whether the wait goes on to the instance's end."""
        return not self.done

    def offer(self, data: Any) -> Verdict | None:
        """Take one status event's data; a verdict once the outcome is known."""
        event = parse_status(data)
        if event is None:
            return None
        raw: dict[str, Any] = data
        if event.correlation_id == self.message_id:
            return self._correlated(event, raw)
        if self.instance_id is not None and event.instance_id == self.instance_id:
            if self.anchor is None:
                self._early.append((event, raw))
                return None
            return self._instance(event, raw)
        return None

    def _correlated(self, event: StatusEvent, raw: dict[str, Any]) -> Verdict | None:
        if event.event is EventType.REJECTED:
            self._saw(event)
            return Verdict(rejection_exit(event), raw, describe(event))
        if self.bulk and event.instance_id is not None:
            self._saw(event)
            return None  # one instance of a bulk purge: progress only
        if self.anchor is None and event.event in self.anchors:
            self._saw(event)
            self.anchor = event
            if self.instance_id is None:
                self.instance_id = event.instance_id
            if event.event in self.done:
                return Verdict(Exit.OK, raw)
            early, self._early = list(self._early), deque(maxlen=_KEPT_BEFORE_ANCHOR)
            for kept, kept_raw in early:
                verdict = self._instance(kept, kept_raw)
                if verdict is not None:
                    return verdict
            return None
        if self.anchor is not None:
            return self._instance(event, raw)
        if event.event in self.done:
            self._saw(event)
            return Verdict(Exit.OK, raw)
        if self.instance_id is not None and event.instance_id == self.instance_id:
            self._early.append((event, raw))
        return None

    def _instance(self, event: StatusEvent, raw: dict[str, Any]) -> Verdict | None:
        """An event of the anchored instance."""
        assert self.anchor is not None
        if _before(event.occurred_at, self.anchor.occurred_at):
            return None  # an earlier run under the same id (a replayed stream)
        self._saw(event)
        if event.event in self.done:
            return Verdict(Exit.OK, raw)
        code = ENDINGS.get(event.event)
        if code is None:
            return None
        return Verdict(code, raw, "" if code is Exit.OK else describe(event))

    def _saw(self, event: StatusEvent) -> None:
        self.seen += 1
        self.last = event


def _before(when: datetime, anchor: datetime) -> bool:
    return when < anchor
