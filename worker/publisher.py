"""Publishes status events as CloudEvents on the status topic, through the sidecar."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent
from pydantic import BaseModel

from worker import traces
from worker.config import Settings
from worker.events import EventType, StatusEvent, TimelineEntry
from worker.groupcommit import GroupCommit
from worker.handlers.inbound import Inbound
from worker.instruments import NO_INSTRUMENTS, Instruments
from worker.outcomes import Transient

log = logging.getLogger(__name__)
echo = logging.getLogger("worker.status")  # one compact line per published event (echo_status)

# A cut field keeps a preview of this share of the limit; five such fields fit in it.
_PREVIEW_SHARE = 8
# Room in the limit for the CloudEvent's attributes and the fields the sidecar adds.
_ENVELOPE_BYTES = 1_024
# A cut timeline entry keeps a preview of its result of this share of the limit.
_ENTRY_PREVIEW_SHARE = 64


class _NotAllPublished(Exception):
    """A bulk publish that the sidecar answered with failed entries."""


@dataclass(frozen=True)
class Outbound:
    """A status event with the CloudEvent id it is always published under."""

    event_id: str
    event: StatusEvent

    def to_record(self) -> dict[str, Any]:
        return {"id": self.event_id, "event": self.event.model_dump(mode="json")}

    @staticmethod
    def from_record(record: dict[str, Any]) -> Outbound:
        return Outbound(record["id"], StatusEvent.model_validate(record["event"]))


class PublishClient(Protocol):
    """The part of `dapr.clients.DaprClient` the publisher uses."""

    def publish_event(
        self,
        pubsub_name: str,
        topic_name: str,
        data: bytes | str,
        publish_metadata: dict[str, str] = ...,
        metadata: Any = ...,
        data_content_type: str | None = ...,
    ) -> Any: ...

    def publish_events(
        self,
        pubsub_name: str,
        topic_name: str,
        data: Sequence[bytes | str],
        publish_metadata: dict[str, str] = ...,
        data_content_type: str | None = ...,
    ) -> Any: ...


def _data(model: BaseModel) -> dict[str, Any]:
    """``model`` as the JSON data the CloudEvent carries."""
    return model.model_dump(mode="json", exclude_none=True)


def _json(model: BaseModel) -> bytes:
    """``model`` as JSON, byte for byte as the CloudEvent around it will carry it (spaced
    separators, non-ASCII escaped), so that sizes measured here are the sizes sent."""
    return json.dumps(_data(model)).encode()


def _shrink(event: StatusEvent, limit: int) -> dict[str, Any]:
    """The data of ``event``, with bulky fields cut to a preview when its JSON exceeds
    ``limit``."""
    data = _data(event)
    if len(json.dumps(data).encode()) <= limit:
        return data
    preview = limit // _PREVIEW_SHARE
    cut: dict[str, Any] = {"truncated": True}
    for field in ("output", "input", "custom_status"):
        value = getattr(event, field)
        if value is not None:
            cut[field] = json.dumps(value)[:preview]
    if event.failure is not None:
        cut["failure"] = event.failure.model_copy(
            update={
                "stack_trace": None,
                "message": event.failure.message[:preview],
            }
        )
    if event.reason is not None:
        cut["reason"] = event.reason[:preview]
    shrunk = event.model_copy(update=cut)
    if event.timeline:
        entry_preview = limit // _ENTRY_PREVIEW_SHARE
        entries = [_cut_entry(entry, entry_preview) for entry in event.timeline]
        shrunk = _fit_timeline(shrunk.model_copy(update={"timeline": entries}), limit)
    return _data(shrunk)


def _cut_entry(entry: TimelineEntry, preview: int) -> TimelineEntry:
    """``entry`` with a long result cut to a preview of its JSON, and no stack trace."""
    update: dict[str, Any] = {}
    if entry.result is not None:
        text = json.dumps(entry.result)
        if len(text) > preview:
            update["result"] = text[:preview]
    if entry.failure is not None:
        update["failure"] = entry.failure.model_copy(
            update={"stack_trace": None, "message": entry.failure.message[:preview]}
        )
    return entry.model_copy(update=update) if update else entry


def _fit_timeline(event: StatusEvent, limit: int) -> StatusEvent:
    """``event`` whose timeline keeps its first entry (the run) and as many of the newest as
    fit in ``limit``; how many were left out is said in ``reason`` (when it has none)."""
    entries = event.timeline or []
    note = event.reason is None

    def with_entries(kept: list[TimelineEntry]) -> StatusEvent:
        update: dict[str, Any] = {"timeline": kept}
        if note and len(kept) < len(entries):
            update["reason"] = (
                f"timeline cut to fit: {len(entries) - len(kept)} of {len(entries)} entries "
                "left out (the first and the newest are kept)"
            )
        return event.model_copy(update=update)

    def size(candidate: StatusEvent) -> int:
        return len(_json(candidate))

    if size(event) <= limit:
        return event
    # Room for entries: what the event takes with none (and the longest note), then a
    # separator (", ") before each entry after the first.
    room = limit - size(with_entries([]))
    sizes = [len(_json(entry)) for entry in entries]
    head: list[TimelineEntry] = []
    if sizes[0] <= room:
        head, room = [entries[0]], room - sizes[0]
    start = len(entries)
    while start > len(head) and sizes[start - 1] + 2 <= room:
        start -= 1
        room -= sizes[start] + 2
    kept = head + entries[start:]
    fitted = with_entries(kept)
    while kept and size(fitted) > limit:  # never expected: sizes are measured as serialised
        kept = kept[1:]
        fitted = with_entries(kept)
    return fitted


class StatusPublisher:
    """Publishes `Outbound` events, honouring the configured event-type filters."""

    def __init__(
        self,
        client: PublishClient,
        settings: Settings,
        instruments: Instruments = NO_INSTRUMENTS,
        *,
        bulk: bool = False,
    ) -> None:
        """``bulk``: events published at once by several threads go out in one bulk publish
        (`worker.groupcommit`). Only for a pub/sub that ignores per-message metadata (the
        ``partitionKey``, which a bulk publish cannot carry per event): see
        `worker.sidecar.publishes_in_bulk`."""
        self._client = client
        self._settings = settings
        self._instruments = instruments
        self._together: GroupCommit[tuple[bytes, str]] | None = (
            GroupCommit(self._publish_together) if bulk else None
        )
        self._enabled = set(settings.status_events) if settings.status_events else None
        self._per_workflow = {k: set(v) for k, v in settings.status_events_per_workflow.items()}
        # Told of every event once it is out (or filtered out by the settings above): a
        # surface that shows the instances (the console) keeps its view up to date with them.
        self.listeners: list[Callable[[Outbound], None]] = []

    @property
    def in_bulk(self) -> bool:
        return self._together is not None

    def wanted(self, event: StatusEvent) -> bool:
        if event.workflow is not None and event.workflow in self._per_workflow:
            return event.event in self._per_workflow[event.workflow]
        return self._enabled is None or event.event in self._enabled

    def publish(self, outbound: Outbound) -> None:
        event = outbound.event
        if not self.wanted(event):
            self._instruments.status_event(event.event.value, "skipped")
            self._tell(outbound)
            return
        subject = event.instance_id or ""
        topic = self._settings.status_topic
        # Inside a trace, a PRODUCER span; the event carries its context (see cloudevent).
        with traces.publishing(
            topic, outbound.event_id, event.cloudevent_type(), event.instance_id
        ):
            try:
                if self._together is not None:
                    self._together.submit((self.cloudevent(outbound), subject))
                else:
                    self._publish_one(self.cloudevent(outbound), subject)
            except (grpc.RpcError, _NotAllPublished) as error:
                self._instruments.status_event(event.event.value, "failed")
                if _code(error) is grpc.StatusCode.PERMISSION_DENIED:
                    # Retried like any failure (nothing is lost once the scopes are mended),
                    # but it is a configuration error: say so plainly.
                    log.error(
                        "the sidecar refuses to let app %r publish on %r: the pub/sub "
                        "component's publishingScopes must grant it (see "
                        "docs/how-to/access-control.md); retrying",
                        self._settings.app_id,
                        topic,
                    )
                raise Transient(f"publish {event.event} for {subject}: {error}") from error
        self._instruments.status_event(event.event.value, "published")
        if self._settings.echo_status:
            echo.info(compact(event))
        self._tell(outbound)

    def _publish_one(self, cloudevent: bytes, subject: str) -> None:
        self._client.publish_event(
            pubsub_name=self._settings.pubsub_name,
            topic_name=self._settings.status_topic,
            data=cloudevent,
            data_content_type="application/cloudevents+json",
            # Broker metadata, for brokers that partition (Kafka, Event Hubs); consumers
            # read the same key from the CloudEvent's `partitionkey` extension.
            publish_metadata={"partitionKey": subject} if subject else {},
        )

    def _publish_together(self, events: list[tuple[bytes, str]]) -> None:
        """One call for ``events`` ((CloudEvent, subject) each). Should the sidecar fail any
        of them, all are failed (which went out cannot be told): their handlers publish them
        again, under the same ids."""
        if len(events) == 1:
            self._publish_one(*events[0])
            return
        response = self._client.publish_events(
            pubsub_name=self._settings.pubsub_name,
            topic_name=self._settings.status_topic,
            data=[cloudevent for cloudevent, _ in events],
            data_content_type="application/cloudevents+json",
        )
        if response.failed_entries:
            raise _NotAllPublished(
                f"{len(response.failed_entries)} of {len(events)} events not published: "
                f"{response.failed_entries[0].error}"
            )

    def _tell(self, outbound: Outbound) -> None:
        for listener in self.listeners:
            try:
                listener(outbound)
            except Exception:  # a listener never stops the worker's own work
                log.exception("status listener %r failed", listener)

    def dead_letter(self, message: Inbound) -> None:
        """Move a rejected message to the dead-letter topic, when one is set. The sidecar does
        this for a message the worker answers `drop`; a parked message has been acknowledged
        already, so the worker does it itself, with the message's own CloudEvent id."""
        topic = self._settings.dead_letter_topic
        if topic is None:
            return
        attributes = {
            "id": message.message_id,
            "source": message.source,
            "type": message.event_type or "com.dapr.event.sent",
            "datacontenttype": message.content_type or "application/json",
        }
        try:
            data: Any = json.loads(message.data)
        except ValueError:
            data = message.data  # not JSON: carried as data_base64
        try:
            self._client.publish_event(
                pubsub_name=self._settings.pubsub_name,
                topic_name=topic,
                data=bytes(to_json(CloudEvent(attributes, data))),
                data_content_type="application/cloudevents+json",
            )
        except grpc.RpcError as error:
            raise Transient(f"dead-letter {message.describe()}: {error}") from error

    def cloudevent(self, outbound: Outbound) -> bytes:
        """The whole CloudEvent, structured: the sidecar passes it on as it is (adding only
        its topic fields), so consumers get every attribute below. Inside a trace it carries
        the current W3C trace context (extensions ``traceparent``, ``tracestate``, and Dapr's
        ``traceid``, with which the sidecar keeps the event's context rather than its own)."""
        event = outbound.event
        attributes = {
            "id": outbound.event_id,
            "type": event.cloudevent_type(),
            "source": self._settings.app_id,
            "datacontenttype": "application/json",
            "time": event.occurred_at.isoformat(),
        }
        if event.instance_id:
            attributes["subject"] = event.instance_id
            attributes["partitionkey"] = event.instance_id  # CloudEvents partitioning extension
        headers = traces.carrier()
        if "traceparent" in headers:
            attributes["traceparent"] = attributes["traceid"] = headers["traceparent"]
            if headers.get("tracestate"):
                attributes["tracestate"] = headers["tracestate"]
        limit = self._settings.max_status_payload_bytes - _ENVELOPE_BYTES
        # The cloudevents package writes it (and checks its attributes). Written by hand it
        # cost a fifth (~20 us against ~106 us), some 2 % of a message: not worth owning a
        # serialiser of our own.
        return bytes(to_json(CloudEvent(attributes, _shrink(event, limit))))

    def publish_all(self, events: Iterable[Outbound]) -> None:
        for outbound in events:
            self.publish(outbound)


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def compact(event: StatusEvent) -> str:
    """One short line for a terminal: time, instance, event, status, and what matters."""
    parts = [
        event.occurred_at.strftime("%H:%M:%S.%f")[:-3],
        event.event.value,
        event.instance_id or "-",
    ]
    if event.status:
        parts.append(event.status)
    if event.workflow:
        parts.append(f"workflow={event.workflow}")
    if event.event_name:
        parts.append(f"event_name={event.event_name}")
    if event.count is not None:
        parts.append(f"count={event.count}")
    if event.failure is not None:
        parts.append(f"failure={event.failure.message[:120]!r}")
    if event.code is not None:
        parts.append(f"code={event.code.value}")
    if event.reason:
        parts.append(f"reason={event.reason[:160]!r}")
    return "status " + " ".join(parts)


ALL_EVENT_TYPES = frozenset(EventType)
