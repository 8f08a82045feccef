"""The straight line every message takes, whatever its topic.

CloudEvent in -> claim (idempotency) -> topic handler (validation, one sidecar call) ->
status events out -> record -> success, retry or drop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse

from worker import logcontext, traces
from worker.events import STARTS, EventType, StatusEvent, iso, now, stable_event_id
from worker.handlers.inbound import Inbound
from worker.idempotency import Begin, Claim, IdempotencyStore, message_key
from worker.instruments import NO_INSTRUMENTS, Instruments, Outcome, RetryReason
from worker.liveness import Liveness
from worker.outcomes import Missing, RejectCode, Rejected, Transient
from worker.parking import ParkingLot
from worker.publisher import Outbound, StatusPublisher
from worker.purges import Purges

log = logging.getLogger(__name__)
audit = logging.getLogger("worker.audit")

_ATTEMPTS_REMEMBERED = 10_000
# A message that arrives before the worker is ready waits this long, then is redelivered.
_READY_WAIT_SECONDS = 5.0
_WAITING = "waiting"  # a parked message that still waits for its instance: not an outcome
_ANSWERS = {Outcome.DUPLICATE: "success", Outcome.PARKED: "success", _WAITING: "retry"}


@dataclass(frozen=True)
class Verdict:
    """The answer to the sidecar, and what became of the message (labels for telemetry)."""

    response: TopicEventResponse
    outcome: str
    reason: str = ""


def _verdict(outcome: str, reason: str = "") -> Verdict:
    return Verdict(TopicEventResponse(_ANSWERS.get(outcome, outcome)), outcome, reason)


class TopicHandler(Protocol):
    """Handles one topic's messages: validates, calls the sidecar, reports what happened."""

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        """Do the message's work once. Raise `Rejected` or `Transient` when it cannot."""
        ...


class InFlight:
    """Counts messages being handled, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()
        self.draining = False

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *_: object) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout)


def rejection(
    message: Inbound,
    reason: str,
    *,
    code: RejectCode,
    instance_id: str | None = None,
    workflow: str | None = None,
    status: str | None = None,
) -> Outbound:
    event = StatusEvent(
        event=EventType.REJECTED,
        instance_id=instance_id,
        workflow=workflow,
        status=status,
        reason=reason,
        code=code,
        correlation_id=message.message_id,
        occurred_at=now(),
    )
    key = message_key(message.topic, message.source, message.message_id)
    return Outbound(stable_event_id(key, EventType.REJECTED.value), event)


class Pipeline:
    """Runs a `TopicHandler` for each delivery and maps the result to a pub/sub response."""

    def __init__(
        self,
        store: IdempotencyStore,
        publisher: StatusPublisher,
        max_transient_attempts: int,
        max_message_bytes: int = 1_000_000,
        *,
        parking: ParkingLot | None = None,
        grace_seconds: float = 0.0,
        purges: Purges | None = None,
        ready: threading.Event | None = None,
        instruments: Instruments = NO_INSTRUMENTS,
        liveness: Liveness | None = None,
    ) -> None:
        """``parking``/``grace_seconds``: where a message for an instance that does not exist
        yet waits, and for how long (see `worker.parking`); ``purges``: which ids were purged
        (a message about one is rejected at once, see `worker.purges`). ``ready``: set once
        the worker can act on messages (its workflow runtime is connected). ``instruments``:
        told what becomes of each message (`worker.instruments`). ``liveness``: told of each
        try that failed and each message done with (`worker.liveness`)."""
        self._store = store
        self._publisher = publisher
        self._max_bytes = max_message_bytes
        self._max_attempts = max_transient_attempts
        self._parking = parking
        self._grace = grace_seconds
        self._purges = purges
        self._ready = ready
        self._instruments = instruments
        self._liveness = liveness
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.in_flight = InFlight()

    def __call__(self, topic: str, handler: TopicHandler, event: v1.Event) -> TopicEventResponse:
        self._instruments.message_received(topic)
        if self.in_flight.draining:  # shutting down: let another replica have it
            return self.not_now(topic, RetryReason.DRAINING, time.perf_counter())
        began = time.perf_counter()
        if self._ready is not None and not self._ready.wait(_READY_WAIT_SECONDS):
            return self.not_now(topic, RetryReason.STARTING, began)  # the sidecar redelivers
        return self.handle(handler, inbound(topic, event))

    def handle(self, handler: TopicHandler, message: Inbound) -> TopicEventResponse:
        """Run ``message`` through the line. A message retried from the parking lot answers
        `retry` while it still waits for its instance."""
        began = time.perf_counter()
        self._instruments.in_flight(message.topic, 1)
        try:
            with (
                traces.processing(
                    message.topic, message.message_id, message.traceparent, message.tracestate
                ) as span,
                logcontext.about(topic=message.topic, message_id=message.message_id),
                self.in_flight,
            ):
                verdict = self._run(handler, message)
                if span.is_recording():
                    span.set_attribute("worker.outcome", verdict.outcome)
        finally:
            self._instruments.in_flight(message.topic, -1)
        if verdict.outcome != _WAITING:
            seconds = time.perf_counter() - began
            self._instruments.message_handled(
                message.topic, verdict.outcome, verdict.reason, seconds
            )
        return verdict.response

    def not_now(self, topic: str, reason: str, began: float) -> TopicEventResponse:
        """Answer `retry` without handling (shutting down, not ready, no room), counted."""
        seconds = time.perf_counter() - began
        self._instruments.message_handled(topic, Outcome.RETRY, reason, seconds)
        return TopicEventResponse("retry")

    def _run(self, handler: TopicHandler, message: Inbound) -> Verdict:
        key = message_key(message.topic, message.source, message.message_id)
        try:
            claim = self._store.begin(key)
            if claim.outcome is Begin.DONE:
                log.info(
                    "duplicate %s: republishing its %d event(s)",
                    message.describe(),
                    len(claim.events),
                )
                self._publisher.publish_all(claim.events)
                if not claim.published:
                    self._store.finish(key, claim.events)
                return _verdict(Outcome.DUPLICATE)
            if claim.outcome is Begin.BUSY:
                log.info("%s is being handled by another delivery: retry later", message.describe())
                return _verdict(Outcome.RETRY, RetryReason.BUSY)
        except Transient as error:
            log.warning("retry %s: %s", message.describe(), error)
            return _verdict(Outcome.RETRY, RetryReason.TRANSIENT)

        status, code = "success", ""
        try:
            if len(message.data) > self._max_bytes:
                raise Rejected(
                    f"message is {len(message.data)} bytes; the limit is {self._max_bytes}",
                    code=RejectCode.TOO_LARGE,
                )
            events = handler.handle(message, claim)
        except Missing as error:
            first_seen = message.first_seen if message.first_seen is not None else time.time()
            waited = time.time() - first_seen
            purged_at = self._purged_at(error.instance_id)
            if purged_at is not None:  # it existed: waiting will not bring it back
                reason = f"{error}: it was purged at {iso(purged_at)}"
                code = RejectCode.PURGED
                events = [
                    rejection(
                        message, reason, code=code, instance_id=error.instance_id, status="PURGED"
                    )
                ]
                status = "drop"
            elif self._parking is not None and waited < self._grace:
                return self._park(key, message, first_seen, error)
            else:
                reason = str(error)
                if self._parking is not None and self._grace > 0:
                    reason += f" (waited {waited:.0f}s for it to be started)"
                code = RejectCode.UNKNOWN_INSTANCE
                events = [rejection(message, reason, code=code, instance_id=error.instance_id)]
                status = "drop"
        except Rejected as error:
            events = [
                rejection(
                    message,
                    error.reason,
                    code=error.code,
                    status=error.status,
                    instance_id=error.instance_id,
                    workflow=error.workflow,
                )
            ]
            status, code = "drop", error.code
        except Exception as error:  # Transient, or a bug: retry, but not for ever
            kind = RetryReason.TRANSIENT if isinstance(error, Transient) else RetryReason.UNEXPECTED
            self._instruments.transient_attempt(message.topic, kind)
            if self._liveness is not None:
                self._liveness.failed(key, error)
            if self._count_attempt(key) < self._max_attempts:
                log.warning(
                    "retry %s: %s",
                    message.describe(),
                    error,
                    exc_info=not isinstance(error, Transient),
                )
                self._store.release(key, acted=True)  # the failed call may have been made
                return _verdict(Outcome.RETRY, kind)
            reason = f"gave up after {self._max_attempts} attempts; last error: {error}"
            code = RejectCode.GAVE_UP
            events, status = [rejection(message, reason, code=code)], "drop"

        instance_id = next((o.event.instance_id for o in events if o.event.instance_id), None)
        traces.tag_instance(instance_id)
        logcontext.note(instance_id=instance_id)
        try:
            # Publish, then record: a done record then means "its events are out" (a
            # workflow's completion report waits for its `started`). If publishing fails, the
            # outcome is still recorded, so the redelivery only republishes.
            self._publisher.publish_all(events)
        except Transient as error:
            log.warning("retry %s: %s", message.describe(), error)
            try:
                self._store.finish(key, events, published=False)
            except Transient:
                log.warning("could not record %s either; its claim expires by lease", key)
            return _verdict(Outcome.RETRY, RetryReason.TRANSIENT)
        try:
            self._store.finish(key, events)
        except Transient as error:
            log.warning("retry %s (events published): %s", message.describe(), error)
            return _verdict(Outcome.RETRY, RetryReason.TRANSIENT)
        self._forget_attempts(key)
        self._audit(message, events, status)
        if self._parking is not None and any(o.event.event in STARTS for o in events):
            self._parking.nudge()  # a parked message may have waited for this instance
        return _verdict(status, code)

    def _purged_at(self, instance_id: str) -> datetime | None:
        """When ``instance_id`` was purged, if the worker knows (else it may be started yet)."""
        if self._purges is None:
            return None
        try:
            return self._purges.purged_at(instance_id)
        except Transient as error:
            log.warning("%s; taking %s as not started yet", error, instance_id)
            return None

    def _park(self, key: str, message: Inbound, first_seen: float, missing: Missing) -> Verdict:
        """Keep a message whose instance does not exist yet, and free its delivery."""
        assert self._parking is not None
        self._store.release(key, acted=False)  # nothing done: its instance does not exist
        if message.first_seen is not None:  # already parked: it waits on
            return _verdict(_WAITING)
        try:
            self._parking.park(key, message, first_seen)
        except Transient as error:
            log.warning("retry %s: %s", message.describe(), error)
            return _verdict(Outcome.RETRY, RetryReason.TRANSIENT)
        log.info(
            "parked %s: %s; trying again for up to %.0fs",
            message.describe(),
            missing,
            self._grace,
        )
        return _verdict(Outcome.PARKED)

    def _count_attempt(self, key: str) -> int:
        with self._lock:
            count = self._attempts.pop(key, 0) + 1
            self._attempts[key] = count
            while len(self._attempts) > _ATTEMPTS_REMEMBERED:
                self._attempts.popitem(last=False)
            return count

    def _forget_attempts(self, key: str) -> None:
        with self._lock:
            self._attempts.pop(key, None)
        if self._liveness is not None:
            self._liveness.done(key)

    @staticmethod
    def _audit(message: Inbound, events: list[Outbound], status: str) -> None:
        """One JSON line per outcome: who asked (CloudEvent source), what, which, result."""
        if status == "drop":
            for outbound in events:
                event = outbound.event
                log.warning("rejected %s (%s): %s", message.describe(), event.code, event.reason)
        if not audit.isEnabledFor(logging.INFO):  # no line to write: nothing to format
            return
        if not events:
            audit.info(
                json.dumps(
                    {
                        "topic": message.topic,
                        "message_id": message.message_id,
                        "source": message.source,
                        "outcome": status,
                    }
                )
            )
        for outbound in events:
            e = outbound.event
            audit.info(
                json.dumps(
                    {
                        "topic": message.topic,
                        "message_id": message.message_id,
                        "source": message.source,
                        "event": e.event.value,
                        "instance_id": e.instance_id,
                        "workflow": e.workflow,
                        "outcome": status,
                        "reason": e.reason,
                        **({"code": e.code.value} if e.code is not None else {}),
                    }
                )
            )


def inbound(topic: str, event: v1.Event) -> Inbound:
    """The message a delivery on ``topic`` carries."""
    traceparent, tracestate = _trace_context(event)
    return Inbound(
        topic=topic,
        message_id=str(event.EventID() or ""),
        source=str(event.Source() or ""),
        content_type=str(event.ContentType() or ""),
        data=_as_bytes(event.Data()),
        event_type=_text(event.EventType()),
        traceparent=traceparent,
        tracestate=tracestate,
    )


def _trace_context(event: v1.Event) -> tuple[str, str]:
    """The W3C trace context the CloudEvent carries: its ``traceparent``/``tracestate``
    extensions (the publisher's, which the sidecar keeps in the envelope), else the
    delivering sidecar's own from the call's gRPC metadata."""
    extensions = event.Extensions() or {}
    for prefix in ("", "_metadata_"):
        parent = extensions.get(f"{prefix}traceparent")
        if isinstance(parent, str) and parent:
            state = extensions.get(f"{prefix}tracestate")
            return parent, state if isinstance(state, str) else ""
    return "", ""


def _text(value: object) -> str:
    return "" if value is None or value == "None" else str(value)


def _as_bytes(data: object) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    return str(data).encode()
