"""When instances of this app-id were purged, as far as the worker knows.

A message about an instance that does not exist is parked for a grace period: it may have come
before its start (see `worker.parking`). An instance that existed and was purged will not come
back by waiting, so a message about it is rejected at once, saying when it was purged. The
worker notes each purge it makes, and the watch each one it sees (by anyone, also daprd's
retention policy), under ``wfw|purged|<instance id>`` for as long as idempotency records live.

A purged id that is started again exists again, and its messages find it; only a message that
comes *before* such a restart is rejected as purged instead of waiting for it.
"""

from __future__ import annotations

import logging
from datetime import datetime

import grpc

from worker.events import as_utc, iso
from worker.idempotency import StateClient
from worker.outcomes import Transient

log = logging.getLogger(__name__)


class Purges:
    def __init__(self, client: StateClient, store_name: str, ttl_seconds: int) -> None:
        self._client = client
        self._store = store_name
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}

    @staticmethod
    def _key(instance_id: str) -> str:
        return f"wfw|purged|{instance_id}"

    def note(self, instance_id: str, at: datetime) -> None:
        """``instance_id`` was purged at ``at``. Best effort: without the note, a message about
        it waits out the grace period, as for an id never seen."""
        try:
            self._client.save_state(
                self._store, self._key(instance_id), iso(at), state_metadata=self._ttl
            )
        except grpc.RpcError as error:
            log.warning("could not note the purge of %s: %s", instance_id, error)

    def purged_at(self, instance_id: str) -> datetime | None:
        """When ``instance_id`` was purged, or None when no purge of it is known."""
        try:
            response = self._client.get_state(self._store, self._key(instance_id))
        except grpc.RpcError as error:
            raise Transient(f"read the purge record of {instance_id}: {error}") from error
        if not response.data:
            return None
        data = response.data
        text = data.decode() if isinstance(data, bytes) else str(data)
        try:
            return as_utc(datetime.fromisoformat(text))
        except ValueError:
            log.warning("unreadable purge record of %s: %r", instance_id, text)
            return None
