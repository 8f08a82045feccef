"""What the watch remembers, in the state store, so that a restart or another replica goes on
where it left off.

- ``wfw|seen|<instance id>``: the last state of an instance that the status feed accounts for
  (its run, its status, the events raised that it reported, a stall it reported). Written with
  optimistic concurrency: replicas that look at the same instance agree.
- ``wfw|watch|known``: every instance id the sweep knows and its last status, so that an id
  that disappears (purged, also while the worker was down) is noticed.
- ``wfw|watch|lease``: which replica sweeps; it expires unless renewed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from dapr.clients.grpc._state import Concurrency, StateOptions

from worker.idempotency import StateClient
from worker.outcomes import Transient

_KNOWN_KEY = "wfw|watch|known"
_LEASE_KEY = "wfw|watch|lease"


@dataclass
class Seen:
    """The last state of one instance that the status feed accounts for."""

    run: str = ""  # the run's creation time (a new run: replace, rerun in place)
    status: str = ""
    raised: dict[str, int] = field(default_factory=dict)  # observed raises, by name
    stalled: str | None = None  # key of the step reported stalled
    updated: str = ""  # the sidecar's last update time when it was last looked at


class Records:
    def __init__(self, client: StateClient, store_name: str, ttl_seconds: int) -> None:
        self._client = client
        self._store = store_name
        self._ttl = {"ttlInSeconds": str(ttl_seconds)}
        self._write = StateOptions(concurrency=Concurrency.first_write)
        self.replica = uuid.uuid4().hex

    # --- one instance ---------------------------------------------------------------------

    def seen(self, instance_id: str) -> tuple[Seen | None, str | None]:
        raw, etag = self._get(f"wfw|seen|{instance_id}")
        if raw is None:
            return None, None
        data: dict[str, Any] = json.loads(raw)
        return Seen(**data), etag

    def save_seen(self, instance_id: str, seen: Seen, etag: str | None) -> bool:
        """False when another replica changed it meanwhile (look again)."""
        return self._save(f"wfw|seen|{instance_id}", json.dumps(asdict(seen)), etag)

    def forget_seen(self, instance_id: str) -> None:
        try:
            self._client.delete_state(self._store, f"wfw|seen|{instance_id}")
        except grpc.RpcError as error:
            raise Transient(f"forget {instance_id}: {error}") from error

    # --- the sweep's inventory --------------------------------------------------------------

    def known(self) -> dict[str, str] | None:
        """Instance id -> last status; None before the first sweep ever."""
        raw, _ = self._get(_KNOWN_KEY)
        if raw is None:
            return None
        known: dict[str, str] = json.loads(raw)
        return known

    def save_known(self, known: dict[str, str]) -> None:
        try:
            self._client.save_state(
                self._store, _KNOWN_KEY, json.dumps(known, separators=(",", ":"))
            )
        except grpc.RpcError as error:
            raise Transient(f"save the watch's inventory: {error}") from error

    # --- the lease ----------------------------------------------------------------------------

    def hold_lease(self, seconds: float) -> bool:
        """Take or renew the sweeping lease; False while another replica holds it."""
        raw, etag = self._get(_LEASE_KEY)
        now = time.time()
        if raw is not None:
            lease = json.loads(raw)
            if lease["holder"] != self.replica and float(lease["until"]) > now:
                return False
        value = json.dumps({"holder": self.replica, "until": now + seconds})
        return self._save(_LEASE_KEY, value, etag, ttl=False)

    def release_lease(self) -> None:
        raw, etag = self._get(_LEASE_KEY)
        if raw is not None and json.loads(raw)["holder"] == self.replica:
            self._save(_LEASE_KEY, json.dumps({"holder": "", "until": 0}), etag, ttl=False)

    # --- plumbing -------------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[str | None, str | None]:
        try:
            response = self._client.get_state(self._store, key)
        except grpc.RpcError as error:
            raise Transient(f"read {key}: {error}") from error
        if not response.data:
            return None, None
        data = response.data
        return (data.decode() if isinstance(data, bytes) else str(data)), response.etag or None

    def _save(self, key: str, value: str, etag: str | None, ttl: bool = True) -> bool:
        try:
            self._client.save_state(
                self._store,
                key,
                value,
                etag=etag,
                options=self._write,
                state_metadata=self._ttl if ttl else None,
            )
            return True
        except grpc.RpcError as error:
            if _conflict(error):
                return False
            raise Transient(f"save {key}: {error}") from error


def _conflict(error: grpc.RpcError) -> bool:
    """An etag mismatch (someone else wrote first), as opposed to a fault."""
    code = error.code() if hasattr(error, "code") else None
    text = (error.details() if hasattr(error, "details") else str(error)) or ""
    return code in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION) or (
        "etag" in text.lower()
    )
