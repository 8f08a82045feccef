"""The console's actions, each one message through the worker's own line.

An action (from a page or the API) becomes an `Inbound` message for the topic that would carry
it (``workflow.start``, ``workflow.approval``, ``workflow.control``), with the CloudEvent source
``console:<user>`` and the id the caller gave (``Idempotency-Key``) or a new one, and is handed
to a `Pipeline` with the topic's own handler: the same claim (idempotency), validation, sidecar
calls, status events, record and audit line as a published message. Only one thing differs: a
message for an unknown instance is rejected at once instead of parked (the caller is waiting).

The outcome is what the line published for it (a listener on the publisher, per thread): the
status events, or the ``rejected`` event with its reason. Asked again with the same key, the
line republishes the recorded events, so the answer is the same.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dapr.clients.grpc._response import TopicEventResponseStatus

from worker.actions import BULK_ACTIONS, BY_NAME
from worker.config import Settings
from worker.events import EventType, RejectCode, now
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline, TopicHandler
from worker.publisher import Outbound
from worker.topics import APPROVAL, CONTROL, START

log = logging.getLogger(__name__)
audit = logging.getLogger("worker.audit")

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def valid_key(key: str) -> bool:
    """An Idempotency-Key: 1-200 printable ASCII characters, no spaces (a message id)."""
    return bool(_KEY.fullmatch(key))


@dataclass
class Outcome:
    """What became of one action."""

    state: str  # done, rejected, retry (try again, same key), pending (still running)
    message_id: str
    events: list[Outbound] = field(default_factory=list)
    reason: str | None = None

    @property
    def http_status(self) -> int:
        if self.state == "done":
            return 200
        if self.state == "pending":
            return 202
        if self.state == "retry":
            return 503
        return rejection_status(self.code)

    @property
    def code(self) -> RejectCode | None:
        """The code of the `rejected` event the action caused (None unless rejected)."""
        if self.state != "rejected":
            return None
        for outbound in self.events:
            if outbound.event.event is EventType.REJECTED:
                return outbound.event.code or RejectCode.OTHER
        return RejectCode.OTHER

    @property
    def instance_id(self) -> str | None:
        for outbound in self.events:
            if outbound.event.instance_id:
                return outbound.event.instance_id
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.state,
            "message_id": self.message_id,
            "instance_id": self.instance_id,
            "reason": self.reason,
            "code": self.code,
            "events": [
                {
                    "id": o.event_id,
                    "type": o.event.cloudevent_type(),
                    "data": o.event.model_dump(mode="json", exclude_none=True),
                }
                for o in self.events
            ],
        }


REJECTION_STATUS: dict[RejectCode, int] = {
    RejectCode.UNKNOWN_INSTANCE: 404,
    RejectCode.PURGED: 404,  # gone for good
    RejectCode.INSTANCE_EXISTS: 409,  # the instance's state forbids it
    RejectCode.STATE_FORBIDS: 409,
    RejectCode.GAVE_UP: 503,  # transient faults to the end: the same request may succeed later
    RejectCode.INVALID_MESSAGE: 422,  # the request itself: not JSON, not the schema, ...
    RejectCode.TOO_LARGE: 422,
    RejectCode.UNKNOWN_WORKFLOW: 422,
    RejectCode.SIDECAR_REFUSED: 422,
    RejectCode.OTHER: 422,
}
"""The HTTP status of a rejection, by its code: every code has one (a unit test keeps it so)."""


def rejection_status(code: RejectCode | None) -> int:
    """The HTTP status that says why a request was rejected, read from its code, never from
    its reason's text (a rejection without a code, which this worker never makes: 422)."""
    return REJECTION_STATUS[code or RejectCode.OTHER]


class _Capture(threading.local):
    events: list[Outbound] | None = None


class Actions:
    """Runs actions through the line, with a deadline per call."""

    def __init__(
        self,
        pipeline: Pipeline,
        handlers: Mapping[str, TopicHandler],
        settings: Settings,
        timeout_seconds: float,
    ) -> None:
        self._pipeline = pipeline
        self._handlers = handlers
        self.settings = settings
        self._timeout = timeout_seconds
        self._capture = _Capture()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="console-action")
        self._running: dict[tuple[str, str, str], Future[Outcome]] = {}
        self._lock = threading.RLock()  # a future done at once calls back in this thread

    def on_status(self, outbound: Outbound) -> None:
        """The publisher's listener: events published by an action's own thread are its
        outcome."""
        events = self._capture.events
        if events is not None:
            events.append(outbound)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for f in self._running.values() if not f.done())

    # --- the actions -------------------------------------------------------------------------

    def start(self, user: str, body: bytes, key: str | None = None) -> Outcome:
        return self.send(user, START.address(self.settings), body, key)

    def raise_event(
        self, user: str, instance_id: str, body: bytes, key: str | None = None
    ) -> Outcome:
        return self.send(
            user, APPROVAL.address(self.settings), _with(body, instance_id=instance_id), key
        )

    def control(
        self, user: str, action: str, instance_id: str | None, body: bytes, key: str | None = None
    ) -> Outcome:
        fields: dict[str, Any] = {"action": action}
        if instance_id is not None:
            fields["instance_id"] = instance_id
        return self.send(user, CONTROL.address(self.settings), _with(body, **fields), key)

    def send(self, user: str, topic: str, data: bytes, key: str | None = None) -> Outcome:
        """Hand the message to the line; wait for its outcome up to the deadline."""
        key = key or str(uuid.uuid4())
        source = f"console:{user}"
        running = (topic, source, key)
        with self._lock:
            future = self._running.get(running)
            if future is None or future.done():
                message = Inbound(
                    topic=topic,
                    message_id=key,
                    source=source,
                    content_type="application/json",
                    data=data,
                    event_type="io.github.dapr-workflow-worker.console",
                )
                future = self._pool.submit(self._handle, message)
                self._running[running] = future
                future.add_done_callback(lambda _: self._forget(running))
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            return Outcome(
                "pending",
                key,
                reason=f"still being handled after {self._timeout:.0f}s; send the same request "
                "with the same Idempotency-Key for its outcome",
            )

    def _forget(self, running: tuple[str, str, str]) -> None:
        with self._lock:
            future = self._running.get(running)
            if future is not None and future.done():
                del self._running[running]

    def _handle(self, message: Inbound) -> Outcome:
        events: list[Outbound] = []
        self._capture.events = events
        try:
            response = self._pipeline.handle(self._handlers[message.topic], message)
        finally:
            self._capture.events = None
        rejected = [o for o in events if o.event.event is EventType.REJECTED]
        if response.status is TopicEventResponseStatus.retry:
            return Outcome(
                "retry",
                message.message_id,
                events,
                reason="a transient fault (the sidecar is busy or unreachable, or this request "
                "is being handled right now): send it again with the same Idempotency-Key",
            )
        if rejected:
            return Outcome("rejected", message.message_id, events, rejected[0].event.reason)
        return Outcome("done", message.message_id, events)


def _with(body: bytes, **fields: Any) -> bytes:
    """The JSON object in ``body`` (empty: {}) with ``fields`` set. A body that is not a JSON
    object goes on as it is, for the line to reject with its reason."""
    if not body.strip():
        return json.dumps(fields).encode()
    try:
        value = json.loads(body)
    except ValueError:
        return body
    if not isinstance(value, dict):
        return body
    return json.dumps({**value, **fields}).encode()


# --- bulk actions -----------------------------------------------------------------------------


@dataclass
class JobResult:
    instance_id: str
    outcome: str
    event: str | None
    reason: str | None
    http_status: int
    code: RejectCode | None = None


@dataclass
class Job:
    """A bulk action on a fixed set of instances (chosen when it was prepared)."""

    id: str
    user: str
    action: str
    instance_ids: list[str]
    key: str
    reason: str | None = None
    description: str = ""
    created_at: datetime = field(default_factory=now)
    state: str = "prepared"  # prepared, running, finished
    results: list[JobResult] = field(default_factory=list)
    finished_at: datetime | None = None

    @property
    def done(self) -> int:
        return len(self.results)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "action": self.action,
            "user": self.user,
            "state": self.state,
            "description": self.description,
            "total": len(self.instance_ids),
            "done": self.done,
            "summary": self.summary(),
            "instance_ids": self.instance_ids,
            "results": [r.__dict__ for r in self.results],
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class Jobs:
    """Bulk actions: each instance is one control message through the line (its own status
    events and audit line), with an id derived from the job's key, so a job sent again acts
    on nothing twice."""

    def __init__(self, actions: Actions, workers: int = 4, keep: int = 200) -> None:
        self._actions = actions
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="console-bulk")
        self._runner = ThreadPoolExecutor(2, thread_name_prefix="console-job")
        self._keep = keep

    def prepare(
        self,
        user: str,
        action: str,
        instance_ids: list[str],
        *,
        reason: str | None = None,
        key: str | None = None,
        description: str = "",
    ) -> Job:
        """A job for these instances, not started. The same user and key give the same job."""
        assert action in BULK_ACTIONS, action
        with self._lock:
            if key is not None and (user, key) in self._by_key:
                existing = self._jobs.get(self._by_key[(user, key)])
                if existing is not None:
                    return existing
            job = Job(
                uuid.uuid4().hex[:12],
                user,
                action,
                list(instance_ids),
                key or uuid.uuid4().hex,
                reason=reason,
                description=description,
            )
            self._jobs[job.id] = job
            self._by_key[(user, job.key)] = job.id
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                del self._jobs[oldest]
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def run(self, job: Job) -> Job:
        """Start ``job`` (once); it goes on in the background."""
        with self._lock:
            if job.state != "prepared":
                return job
            job.state = "running"
        audit.info(
            json.dumps(
                {
                    "console": "bulk",
                    "job_id": job.id,
                    "source": f"console:{job.user}",
                    "action": job.action,
                    "instances": len(job.instance_ids),
                    "description": job.description,
                }
            )
        )
        self._runner.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        def one(instance_id: str) -> JobResult:
            body: dict[str, Any] = {}
            if job.reason and BY_NAME[job.action].takes_reason:
                body["reason"] = job.reason
            try:
                outcome = self._actions.control(
                    job.user,
                    job.action,
                    instance_id,
                    json.dumps(body).encode(),
                    f"{job.key}:{instance_id}",
                )
            except Exception as error:  # a bug: report it, carry on with the others
                log.exception("console: bulk %s of %s", job.action, instance_id)
                return JobResult(instance_id, "error", None, str(error), 500)
            event = outcome.events[0].event.event.value if outcome.events else None
            return JobResult(
                instance_id,
                outcome.state,
                event,
                outcome.reason,
                outcome.http_status,
                outcome.code,
            )

        try:
            for result in self._pool.map(one, job.instance_ids):
                with self._lock:
                    job.results.append(result)
        finally:
            job.state = "finished"
            job.finished_at = now()
            log.info("console: bulk %s by %s: %s", job.action, job.user, job.summary())

    def close(self) -> None:
        self._runner.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


def eligible(action: str, status: str) -> bool:
    """Whether an instance in ``status`` can take a bulk ``action`` (the handler checks again)."""
    return BY_NAME[action].allows(status)


def older(created_at: datetime | None, than: timedelta | None) -> bool:
    if than is None:
        return True
    return created_at is not None and now() - created_at > than
