"""What the worker is about to change on an instance, noted before it calls the sidecar.

The watch (`worker.watch`) publishes every status change it sees that the worker did not make
itself. To tell the two apart it reads these notes: a handler writes "instance X is about to
become SUSPENDED" (or "one more `approval_decision` raised") *before* its sidecar call, so a
watcher that sees the change also finds the note, and leaves the reporting to the handler (which
publishes it under its own stable id). A note the change never follows (the call failed) is
taken back, and every note expires after `NOTE_SECONDS`.

A note is used up by the change it announced, not deleted: it remembers which change that was
(the sidecar's update time), so two watchers that look at the same change at once both find it
(neither publishes it twice), while a later change to the same status by someone else is not
mistaken for the worker's.

Raises are counted per run of the instance (its creation time, see `run_of`): a new run (a
start with ``replace``, a continue-as-new generation) has a history of its own, in which the
worker's raises into an earlier run must not hide anybody else's.

Key: ``wfw|expect|<instance id>`` =
``{"statuses": {status: {"until": t, "used_by": change or null}},
"raised": {run: {name: count}}}`` (notes written before runs were told apart hold
``{name: count}``; they count in every run).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
from dapr.clients.grpc._state import Concurrency, StateOptions

from worker.events import iso, real_time
from worker.idempotency import StateClient
from worker.outcomes import Transient

log = logging.getLogger(__name__)

NOTE_SECONDS = 300.0
_TRIES = 20
_ANY_RUN = ""  # raises noted without a run: they count in every run


def run_of(created_at: datetime | None) -> str:
    """The run of an instance created at ``created_at``, as notes and the watch name it."""
    return iso(created_at)


def noted_run(created_at: datetime | None) -> str:
    """The run a handler notes a raise under: `run_of`, or every run while the sidecar shows
    no creation time yet (an instance that has not run: the watch will see its real one)."""
    if real_time(created_at) is None:
        return _ANY_RUN
    return run_of(created_at)


@dataclass
class Notes:
    """The notes on one instance."""

    # status -> {"until": epoch seconds, "used_by": the change it accounted for, or None}
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # run -> event name -> how many the worker raised into that run
    raised: dict[str, dict[str, int]] = field(default_factory=dict)

    def expects(self, status: str, change: str) -> bool:
        """Whether a live note announced ``change`` to ``status`` (or announced a change to
        it that no change has used yet)."""
        note = self.statuses.get(status)
        if note is None or float(note["until"]) < time.time():
            return False
        return note.get("used_by") in (None, change)

    def raised_in(self, run: str) -> dict[str, int]:
        """Event name -> how many the worker raised into ``run``."""
        counts = dict(self.raised.get(run, {}))
        if run != _ANY_RUN:
            for name, count in self.raised.get(_ANY_RUN, {}).items():
                counts[name] = counts.get(name, 0) + count
        return counts

    def to_json(self) -> str:
        return json.dumps({"statuses": self.statuses, "raised": self.raised})

    @staticmethod
    def from_json(raw: bytes | str) -> Notes:
        data: dict[str, Any] = json.loads(raw)
        raised: dict[str, Any] = dict(data.get("raised", {}))
        if any(isinstance(count, int) for count in raised.values()):  # written before runs
            raised = {_ANY_RUN: raised}
        return Notes(dict(data.get("statuses", {})), raised)


class Expectations:
    def __init__(self, client: StateClient, store_name: str, ttl_seconds: int) -> None:
        self._client = client
        self._store = store_name
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}

    @staticmethod
    def _key(instance_id: str) -> str:
        return f"wfw|expect|{instance_id}"

    def get(self, instance_id: str) -> Notes:
        return self._read(instance_id)[0]

    def expect_status(self, instance_id: str, status: str) -> None:
        until = time.time() + NOTE_SECONDS

        def note(notes: Notes) -> None:
            notes.statuses[status] = {"until": until, "used_by": None}

        self._update(instance_id, note)

    def withdraw_status(self, instance_id: str, status: str) -> None:
        """The change did not happen after all."""
        self._quietly(instance_id, lambda notes: notes.statuses.pop(status, None))

    def expect_raise(self, instance_id: str, name: str, run: str = _ANY_RUN) -> None:
        """One more ``name`` raised by the worker into ``run`` (see `run_of`)."""

        def note(notes: Notes) -> None:
            counts = notes.raised.setdefault(run, {})
            counts[name] = counts.get(name, 0) + 1

        self._update(instance_id, note)

    def withdraw_raise(self, instance_id: str, name: str, run: str = _ANY_RUN) -> None:
        def note(notes: Notes) -> None:
            counts = notes.raised.setdefault(run, {})
            counts[name] = max(0, counts.get(name, 0) - 1)

        self._quietly(instance_id, note)

    def consume_status(self, instance_id: str, status: str, change: str) -> bool:
        """Whether the worker announced ``change`` (identified by the caller, e.g. by the
        sidecar's update time) to ``status``; a note found is marked used by it."""
        notes, _ = self._read(instance_id)
        if not notes.expects(status, change):
            return False
        if notes.statuses[status].get("used_by") == change:
            return True
        found: list[bool] = []

        def use(latest: Notes) -> None:
            found.append(latest.expects(status, change))
            if found[-1]:
                latest.statuses[status]["used_by"] = change

        self._update(instance_id, use)
        return bool(found and found[-1])

    def forget(self, instance_id: str) -> None:
        try:
            self._client.delete_state(self._store, self._key(instance_id))
        except grpc.RpcError as error:
            log.debug("could not delete notes on %s: %s", instance_id, error)

    def _quietly(self, instance_id: str, change: Callable[[Notes], Any]) -> None:
        try:
            self._update(instance_id, change)
        except Transient as error:
            log.warning("could not take back a note on %s (it expires): %s", instance_id, error)

    def _read(self, instance_id: str) -> tuple[Notes, str | None]:
        try:
            response = self._client.get_state(self._store, self._key(instance_id))
        except grpc.RpcError as error:
            raise Transient(f"read notes on {instance_id}: {error}") from error
        if not response.data:
            return Notes(), None
        return Notes.from_json(response.data), response.etag or None

    def _update(self, instance_id: str, change: Callable[[Notes], Any]) -> None:
        """Read, change and write the notes with optimistic concurrency."""
        last: grpc.RpcError | None = None
        for _ in range(_TRIES):
            notes, etag = self._read(instance_id)
            now = time.time()
            notes.statuses = {s: n for s, n in notes.statuses.items() if n["until"] >= now}
            change(notes)
            try:
                self._client.save_state(
                    self._store,
                    self._key(instance_id),
                    notes.to_json(),
                    etag=etag,
                    options=StateOptions(concurrency=Concurrency.first_write),
                    state_metadata=self._ttl,
                )
                return
            except grpc.RpcError as error:
                last = error
                time.sleep(0.01)
        raise Transient(f"update notes on {instance_id}: {last}")
