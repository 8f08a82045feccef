"""Remembers handled messages in the Dapr state store, so a redelivery has no second effect.

Two keys per message, both with a time-to-live:
- ``claim``: written insert-only (first-write concurrency, no etag) before the effect. Only one
  delivery of a message can hold it; a claim older than the lease is taken over (its holder
  died mid-way).
- ``done``: written after the effect, holding the status events to publish. A redelivery that
  finds it republishes those events (same CloudEvent ids) and has no other effect.

A claim given back after a failure that may have left an effect (a start that timed out may
have been made) is not deleted but marked released: the next delivery takes it over
(`Begin.TAKEN_OVER`) at once. So `Begin.NEW` means that no delivery of the message acted on
it, as long as its records are kept (``ttl_seconds``, and the store's own lifetime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import grpc
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions

from worker.groupcommit import GroupCommit
from worker.outcomes import Transient
from worker.publisher import Outbound

log = logging.getLogger(__name__)

_PREFIX = "wfw"


class StateClient(Protocol):
    """The part of `dapr.clients.DaprClient` the store uses."""

    def save_state(
        self, store_name: str, key: str, value: bytes | str, *args: Any, **kwargs: Any
    ) -> Any: ...

    def get_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> Any: ...

    def delete_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> Any: ...

    def save_bulk_state(self, store_name: str, states: list[StateItem]) -> Any: ...


class Begin(Enum):
    NEW = "new"  # no delivery acted on it before: go ahead
    # An earlier delivery claimed it and vanished, or gave it back after a failure that may
    # have left an effect: go ahead, carefully.
    TAKEN_OVER = "taken_over"
    DONE = "done"  # handled before: republish its events, nothing else
    BUSY = "busy"  # another delivery is handling it right now: retry later


@dataclass
class Claim:
    outcome: Begin
    key: str
    previous_claimed_at: float | None = None
    events: list[Outbound] = field(default_factory=list)
    published: bool = True  # DONE: whether its events went out (False: publish failed)


def message_key(topic: str, source: str, message_id: str) -> str:
    """Identity of a message: CloudEvents are unique by (source, id); per topic."""
    digest = hashlib.sha256(f"{topic}\n{source}\n{message_id}".encode()).hexdigest()
    return digest[:40]


class IdempotencyStore:
    def __init__(
        self, client: StateClient, store_name: str, ttl_seconds: int, lease_seconds: float
    ) -> None:
        self._client = client
        self._store = store_name
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}
        self._lease = lease_seconds
        self._first_write = StateOptions(concurrency=Concurrency.first_write)
        # Done records that concurrent deliveries write at once go out in one call.
        self._records: GroupCommit[tuple[str, str]] = GroupCommit(self._write_records)

    def _claim_key(self, key: str) -> str:
        return f"{_PREFIX}|claim|{key}"

    def _done_key(self, key: str) -> str:
        return f"{_PREFIX}|done|{key}"

    def begin(self, key: str) -> Claim:
        """Claim ``key`` for this delivery, or say why not."""
        claim = json.dumps({"claimed_at": time.time()})
        try:
            self._client.save_state(
                self._store,
                self._claim_key(key),
                claim,
                options=self._first_write,
                state_metadata=self._ttl,
            )
            return Claim(Begin.NEW, key)
        except grpc.RpcError as error:
            conflict = error  # most likely: the claim exists; find out below
        done = self._get(self._done_key(key))
        if done is not None:
            record = json.loads(done[0])
            events = [Outbound.from_record(r) for r in record["events"]]
            return Claim(Begin.DONE, key, events=events, published=record.get("published", True))
        existing = self._get(self._claim_key(key))
        if existing is None:
            raise Transient(f"could not claim message {key}: {conflict}") from conflict
        raw, etag = existing
        held = json.loads(raw)
        claimed_at = float(held["claimed_at"])
        released = bool(held.get("released", False))
        if not released and time.time() - claimed_at < self._lease:
            return Claim(Begin.BUSY, key, previous_claimed_at=claimed_at)
        try:
            self._client.save_state(
                self._store,
                self._claim_key(key),
                claim,
                etag=etag,
                options=self._first_write,
                state_metadata=self._ttl,
            )
        except grpc.RpcError:
            return Claim(Begin.BUSY, key, previous_claimed_at=claimed_at)
        if released:
            log.info("took over the claim on message %s, released after a failure", key)
            return Claim(Begin.TAKEN_OVER, key)
        log.warning(
            "took over stale claim on message %s (claimed %.0fs ago)", key, time.time() - claimed_at
        )
        return Claim(Begin.TAKEN_OVER, key, previous_claimed_at=claimed_at)

    def finish(self, key: str, events: list[Outbound], *, published: bool = True) -> None:
        """Record that ``key`` was handled, with the events that report it and whether they
        were published (a redelivery republishes them either way)."""
        record = json.dumps({"events": [e.to_record() for e in events], "published": published})
        try:
            self._records.submit((self._done_key(key), record))
        except grpc.RpcError as error:
            raise Transient(f"record message {key} as handled: {error}") from error

    def _write_records(self, records: list[tuple[str, str]]) -> None:
        if len(records) == 1:
            (key, record), *_ = records
            self._client.save_state(self._store, key, record, state_metadata=self._ttl)
            return
        self._client.save_bulk_state(
            self._store, [StateItem(key, record, metadata=self._ttl) for key, record in records]
        )

    def handled(self, key: str) -> bool | None:
        """True when ``key`` was handled and its events published; False while it is being
        handled or its events are not out yet; None when nothing is known (never seen, or
        forgotten after the TTL)."""
        done = self._get(self._done_key(key))
        if done is not None:
            return bool(json.loads(done[0]).get("published", True))
        return False if self._get(self._claim_key(key)) is not None else None

    def release(self, key: str, *, acted: bool = True) -> None:
        """Give the claim back after a failure, so the redelivery can go ahead at once.

        ``acted``: whether this delivery may have left an effect (a call that failed may have
        been made: a start that timed out). Then the claim is kept, marked released, and the
        redelivery takes it over (`Begin.TAKEN_OVER`) instead of finding it NEW. Otherwise
        (nothing was attempted, e.g. a message parked for its instance) it is deleted.
        """
        try:
            if acted:
                self._client.save_state(
                    self._store,
                    self._claim_key(key),
                    json.dumps({"claimed_at": time.time(), "released": True}),
                    state_metadata=self._ttl,
                )
            else:
                self._client.delete_state(self._store, self._claim_key(key))
        except grpc.RpcError as error:
            log.warning("could not release claim %s (it expires by lease): %s", key, error)

    def _get(self, key: str) -> tuple[str, str] | None:
        try:
            response = self._client.get_state(self._store, key)
        except grpc.RpcError as error:
            raise Transient(f"read idempotency record {key}: {error}") from error
        if not response.data:
            return None
        data = response.data
        return (data.decode() if isinstance(data, bytes) else str(data)), response.etag
