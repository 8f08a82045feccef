"""Messages that came before their instance: kept in the state store and tried again.

A service that publishes a start and at once an approval for it has the two messages consumed
concurrently, so the approval may arrive before the instance exists. Retrying it through the
broker would hold a delivery slot (the in-memory broker delivers a topic's messages one at a
time), so the pipeline *parks* it instead: the message is written to the state store and
acknowledged, and the worker tries it again (every `PARK_POLL_SECONDS`, and at once after any
start) until its instance appears or its grace period ends, when it is rejected as usual.
Parked messages survive a restart, and any replica may retry them: the message's claim
(see `worker.idempotency`) still lets only one delivery act on it.

Keys: ``wfw|parked|<message key>`` holds the message; ``wfw|parked-index`` lists them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from dapr.clients.grpc._state import Concurrency, StateOptions

from worker.handlers.inbound import Inbound
from worker.idempotency import StateClient
from worker.outcomes import Transient

log = logging.getLogger(__name__)

PARK_POLL_SECONDS = 1.0  # while messages are parked
# While none is: one index read per this long per replica (was one a second). A message another
# replica parks is retried by that replica every second; this one joins in within this long.
PARK_IDLE_POLL_SECONDS = 10.0
_INDEX_KEY = "wfw|parked-index"
_INDEX_TRIES = 20


class ParkingLot:
    def __init__(self, client: StateClient, store_name: str, ttl_seconds: int) -> None:
        self._client = client
        self._store = store_name
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}
        self._wake = threading.Event()
        # Whether the index named any message when last read (or one was parked here since):
        # only then is a start worth an early read (a replica that parks retries its own
        # messages every PARK_POLL_SECONDS anyway).
        self._may_hold = True

    @staticmethod
    def _key(message_key: str) -> str:
        return f"wfw|parked|{message_key}"

    def park(self, message_key: str, message: Inbound, first_seen: float) -> None:
        """Keep ``message`` (first seen at ``first_seen``) until `unpark`."""
        record = message.seen_first_at(first_seen).to_record()
        try:
            self._client.save_state(
                self._store, self._key(message_key), json.dumps(record), state_metadata=self._ttl
            )
        except grpc.RpcError as error:
            raise Transient(f"park message {message_key}: {error}") from error
        self._update_index(lambda index: index.setdefault(message_key, first_seen))
        self._may_hold = True
        self._wake.set()  # back to polling every second

    def unpark(self, message_key: str) -> None:
        self._update_index(lambda index: index.pop(message_key, None))
        try:
            self._client.delete_state(self._store, self._key(message_key))
        except grpc.RpcError as error:  # the index no longer names it; its TTL removes it
            log.warning("could not delete parked message %s: %s", message_key, error)

    def _forget(self, message_key: str) -> None:
        self._update_index(lambda index: index.pop(message_key, None))

    def parked(self) -> dict[str, float]:
        """Message key -> when it was first seen, for every parked message."""
        index = self._read_index()[0]
        self._may_hold = bool(index)
        return index

    def load(self, message_key: str) -> Inbound | None:
        try:
            response = self._client.get_state(self._store, self._key(message_key))
        except grpc.RpcError as error:
            raise Transient(f"read parked message {message_key}: {error}") from error
        if not response.data:
            return None
        return Inbound.from_record(json.loads(response.data))

    def nudge(self) -> None:
        """Try the parked messages now (an instance may just have been started), unless
        none was parked when the index was last read: then a start costs no read."""
        if self._may_hold:
            self._wake.set()

    def run(self, retry: Callable[[Inbound], None], stopping: threading.Event) -> None:
        """Until ``stopping`` is set: hand every parked message to ``retry`` (the pipeline),
        every `PARK_POLL_SECONDS` while there are any (`PARK_IDLE_POLL_SECONDS` while there
        are none), and at once when nudged."""
        while not stopping.is_set():
            self._wake.wait(PARK_POLL_SECONDS if self._may_hold else PARK_IDLE_POLL_SECONDS)
            self._wake.clear()
            if stopping.is_set():
                return
            try:
                parked = self.parked()
                for message_key in sorted(parked, key=lambda k: (parked[k], k)):  # oldest first
                    if stopping.is_set():
                        return
                    message = self.load(message_key)
                    if message is None:  # gone (handled, or expired): drop it from the index
                        self._forget(message_key)
                        continue
                    retry(message)
            except Transient as error:
                log.warning("parked messages: %s (trying again)", error)
            except Exception:
                log.exception("parked messages: unexpected error (trying again)")

    def _read_index(self) -> tuple[dict[str, float], str | None]:
        try:
            response = self._client.get_state(self._store, _INDEX_KEY)
        except grpc.RpcError as error:
            raise Transient(f"read the parked-message index: {error}") from error
        if not response.data:
            return {}, None
        index: dict[str, float] = json.loads(response.data)
        return index, response.etag or None

    def _update_index(self, change: Callable[[dict[str, float]], Any]) -> None:
        """Apply ``change`` to the index with optimistic concurrency (replicas share it)."""
        last: grpc.RpcError | None = None
        for _ in range(_INDEX_TRIES):
            index, etag = self._read_index()
            before = dict(index)
            change(index)
            if index == before:
                return
            options = StateOptions(concurrency=Concurrency.first_write)
            try:
                self._client.save_state(
                    self._store, _INDEX_KEY, json.dumps(index), etag=etag, options=options
                )
                return
            except grpc.RpcError as error:
                last = error
                time.sleep(0.01)
        raise Transient(f"update the parked-message index: {last}")
