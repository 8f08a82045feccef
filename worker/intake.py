"""Accept ahead: for a pub/sub that delivers a topic's messages one at a time.

The in-memory pub/sub of the embedded default hands a subscription its next message only once
the app has answered the last one. Answered after the whole line (claim, check, start,
publish, record: some 14 ms), one topic moves at about 70 messages a second however idle the
sidecar is. The intake answers sooner and keeps nothing only in the worker's memory:

1. a delivery is written to a *journal slot* in the state store (one write), then answered
   `success`: the sidecar hands over the next message at once;
2. one of ``lanes`` threads runs it through the pipeline (`Pipeline.handle`), retrying a
   transient fault itself with backoff, as the sidecar would have redelivered it; a message
   the pipeline drops goes to the dead-letter topic, as the sidecar would have moved it;
3. the slot is free for the next delivery, which overwrites it (no call to clear it).

A message that the worker accepted and then could not finish (the process died) is still in
its slot: the next start of the worker runs it before it accepts anything new, and the
message's claim (`worker.idempotency`) keeps it from acting twice. A slot whose message was
handled (its record says so) is left alone; slots expire with the records (``ttl_seconds``),
and are written before them, so a slot never outlives the record of its message.

Per-instance order holds: a message's lane is chosen by the instance it names, and a lane runs
its messages one after another. When every slot is taken a delivery waits for one (so memory
and the work in hand stay bounded), and the sidecar sees the back-pressure it would have seen.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse, TopicEventResponseStatus

from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline, TopicHandler, inbound
from worker.idempotency import StateClient, message_key
from worker.instruments import NO_INSTRUMENTS, Instruments, Outcome, RetryReason
from worker.outcomes import FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS, retry_until_done

log = logging.getLogger(__name__)

# A delivery waits this long for a free slot (or for recovery to end), then is redelivered.
_SLOT_WAIT_SECONDS = 5.0


class DeadLetters(Protocol):
    """Where a message the pipeline drops goes (`StatusPublisher.dead_letter`)."""

    def dead_letter(self, message: Inbound) -> None: ...


class JournalClient(StateClient, Protocol):
    """The part of `dapr.clients.DaprClient` the intake uses."""

    def get_bulk_state(
        self, store_name: str, keys: Sequence[str], *args: Any, **kwargs: Any
    ) -> Any: ...


class Intake:
    """Accepts deliveries into journal slots and runs them on lanes (see the module)."""

    def __init__(
        self,
        pipeline: Pipeline,
        handlers: Mapping[str, TopicHandler],
        client: JournalClient,
        store_name: str,
        journal: str,
        dead_letters: DeadLetters,
        handled: Callable[[str], bool | None],
        *,
        ttl_seconds: int,
        lanes: int,
        slots: int,
        ready: threading.Event,
        stopping: threading.Event,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        """``journal``: the prefix of the slot keys, one journal per app-id (its sidecar).
        ``handled``: whether a message (by `message_key`) was handled and its events are out
        (`IdempotencyStore.handled`). ``ready``: set once messages may be handled (the
        workflow runtime is connected)."""
        self._pipeline = pipeline
        self._handlers = handlers
        self._client = client
        self._store = store_name
        self._journal = journal
        self._dead_letters = dead_letters
        self._handled = handled
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}
        self._ready = ready
        self._stopping = stopping
        self._instruments = instruments
        self._free: queue.Queue[int] = queue.Queue()
        self._lanes: list[queue.Queue[tuple[int, Inbound]]] = [queue.Queue() for _ in range(lanes)]
        self._slots = slots
        self._recovered = threading.Event()
        self._threads: list[threading.Thread] = []

    def _slot_key(self, slot: int) -> str:
        return f"{self._journal}|{slot}"

    def start(self) -> None:
        """Run what an earlier process accepted and did not finish, then start the lanes.
        Deliveries wait until this is done (their slots may hold such messages)."""
        self._recover()
        for number, lane in enumerate(self._lanes):
            thread = threading.Thread(
                target=self._run_lane, args=(lane,), name=f"intake-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._recovered.set()

    def _recover(self) -> None:
        slots = {self._slot_key(slot): slot for slot in range(self._slots)}
        found = 0
        for item in self._client.get_bulk_state(self._store, list(slots)).items:
            slot = slots[item.key]
            if not item.data:
                self._free.put(slot)
                continue
            try:
                message = Inbound.from_record(json.loads(item.data))
            except (ValueError, KeyError, TypeError) as error:
                log.error("journal slot %s holds no message (%s): cleared", item.key, error)
                self._clear(slot)
                self._free.put(slot)
                continue
            if self._handled(message_key(message.topic, message.source, message.message_id)):
                self._free.put(slot)  # handled: the slot was just not taken again
                continue
            found += 1
            self._lane_of(message).put((slot, message))
        if found:
            log.warning("recovering %d message(s) accepted before a restart", found)

    def accept(self, topic: str, event: v1.Event) -> TopicEventResponse:
        """The subscription's handler: keep the message in a slot, queue it, answer at once."""
        self._instruments.message_received(topic)
        began = time.perf_counter()
        if self._pipeline.in_flight.draining:  # shutting down: the sidecar keeps it
            return self._pipeline.not_now(topic, RetryReason.DRAINING, began)
        if not self._recovered.wait(_SLOT_WAIT_SECONDS):
            return self._pipeline.not_now(topic, RetryReason.STARTING, began)
        try:
            slot = self._free.get(timeout=_SLOT_WAIT_SECONDS)
        except queue.Empty:
            return self._pipeline.not_now(topic, RetryReason.BUSY, began)
        message = inbound(topic, event)
        try:
            self._client.save_state(
                self._store,
                self._slot_key(slot),
                json.dumps(message.to_record()),
                state_metadata=self._ttl,
            )
        except grpc.RpcError as error:
            self._free.put(slot)
            log.warning("retry %s: could not accept it: %s", message.describe(), error)
            return self._pipeline.not_now(topic, RetryReason.TRANSIENT, began)
        self._lane_of(message).put((slot, message))
        return TopicEventResponse(Outcome.SUCCESS)

    def _lane_of(self, message: Inbound) -> queue.Queue[tuple[int, Inbound]]:
        """The lane of the instance ``message`` names (of the message itself when it names
        none: a start whose instance id is derived from it)."""
        key = message.message_id
        try:
            body = json.loads(message.data)
            if isinstance(body, dict) and isinstance(body.get("instance_id"), str):
                key = body["instance_id"]
        except ValueError:
            pass
        return self._lanes[zlib.crc32(key.encode()) % len(self._lanes)]

    def _run_lane(self, lane: queue.Queue[tuple[int, Inbound]]) -> None:
        while not self._stopping.is_set():
            try:
                slot, message = lane.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                finished = self._finish(message)
            except Exception:  # a bug: keep the lane and the message, try again later
                log.exception("intake: %s failed; trying it again", message.describe())
                self._stopping.wait(MAX_RETRY_SECONDS)
                lane.put((slot, message))
                continue
            if finished:
                self._free.put(slot)
            # else: stopping; the slot keeps the message for the next start

    def _finish(self, message: Inbound) -> bool:
        """Run ``message`` until it is handled or dropped; False when stopped before that."""
        delay = FIRST_RETRY_SECONDS
        while not self._ready.wait(0.5):
            if self._stopping.is_set():
                return False
        handler = self._handlers[message.topic]
        while True:
            response = self._pipeline.handle(handler, message)
            if response.status is TopicEventResponseStatus.drop:
                # False when stopped first: its rejection is out and recorded, so a restart
                # does not move it (the log says so).
                return retry_until_done(
                    lambda: self._dead_letters.dead_letter(message),
                    self._stopping,
                    f"dead-letter {message.describe()}",
                )
            if response.status is not TopicEventResponseStatus.retry:
                return True
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _clear(self, slot: int) -> None:
        try:
            self._client.delete_state(self._store, self._slot_key(slot))
        except grpc.RpcError as error:  # it stays unreadable: cleared at the next start
            log.warning("could not clear journal slot %d: %s", slot, error)

    def stop(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the lanes to end their current message."""
        for thread in self._threads:
            thread.join(timeout)
