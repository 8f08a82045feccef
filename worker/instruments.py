"""Where the core can be measured: a seam for telemetry, which lives outside the core.

The core calls an `Instruments` at its measurement points; this default does nothing, so a
worker without metrics pays a method call per point and no more. `worker.telemetry.metrics`
implements it with Prometheus. Every label passed here comes from a small fixed set (topic
names from the settings, operations, outcomes, `RejectCode`s, event types), never from a
message's content.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from worker.outcomes import Missing, Rejected, Transient


class Outcome:
    """What became of one handling of a message (the ``outcome`` label)."""

    SUCCESS = "success"  # done: its status events are out
    DUPLICATE = "duplicate"  # handled before: its events republished, nothing else done
    PARKED = "parked"  # its instance does not exist yet: kept and retried (worker.parking)
    RETRY = "retry"  # answered retry: the sidecar redelivers it
    DROP = "drop"  # rejected: a `rejected` event, then dropped (or dead-lettered)


class RetryReason:
    """Why a message was answered `retry` (the ``reason`` label of that outcome)."""

    TRANSIENT = "transient"  # a sidecar fault that may pass (Transient)
    UNEXPECTED = "unexpected"  # any other exception: a bug, retried up to the attempt limit
    BUSY = "busy"  # another delivery holds its claim
    STARTING = "starting"  # the workflow runtime is not connected yet
    DRAINING = "draining"  # shutting down


class Instruments:
    """The measurement points of the core. This one measures nothing."""

    def message_received(self, topic: str) -> None:
        """A delivery of a message on ``topic`` arrived from the sidecar."""

    def in_flight(self, topic: str, delta: int) -> None:
        """The line started (+1) or finished (-1) handling a message on ``topic``."""

    def message_handled(self, topic: str, outcome: str, reason: str, seconds: float) -> None:
        """The line is done with a message: ``outcome`` (see `Outcome`), ``reason`` (a
        `RejectCode` for drop, a `RetryReason` for retry, else "") and how long it took. A
        parked message retried while it still waits is not reported."""

    def transient_attempt(self, topic: str, kind: str) -> None:
        """A handler failed and the message will be tried again (``kind``: `RetryReason`
        transient or unexpected)."""

    def sidecar_call(self, operation: str, result: str, seconds: float) -> None:
        """One call to the sidecar: ``operation`` (start, get, raise, ..., state_save,
        publish), ``result`` (ok, or see `call_result`) and its duration."""

    def status_event(self, event_type: str, result: str) -> None:
        """A status event was published, failed to publish, or was left out by the
        status_events settings (``result``: published, failed, skipped)."""


NO_INSTRUMENTS = Instruments()


def call_result(error: BaseException | None) -> str:
    """The ``result`` label of a sidecar call that raised ``error`` (None: ok): the gRPC status
    code in lower case, or timeout, not_found, rejected, transient, error."""
    if error is None:
        return "ok"
    if isinstance(error, grpc.RpcError):
        code = getattr(error, "code", None)
        status = code() if callable(code) else None
        return status.name.lower() if isinstance(status, grpc.StatusCode) else "error"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, Missing):
        return "not_found"
    if isinstance(error, Rejected):
        return "rejected"
    if isinstance(error, Transient):
        return "transient"
    return "error"


@contextmanager
def timed(instruments: Instruments, operation: str) -> Iterator[None]:
    """Report the sidecar call made inside, with its result (`call_result` of what it
    raised) and duration."""
    began = time.perf_counter()
    failure: BaseException | None = None
    try:
        yield
    except BaseException as error:
        failure = error
        raise
    finally:
        instruments.sidecar_call(operation, call_result(failure), time.perf_counter() - began)


class MeasuredClient:
    """A Dapr client whose state and publish calls are timed (operations state_save,
    state_get, state_delete, state_save_bulk, state_get_bulk, publish, publish_bulk). Used when
    metrics are on."""

    def __init__(self, client: Any, instruments: Instruments) -> None:
        self._client = client
        self._instruments = instruments

    def _timed(self, operation: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with timed(self._instruments, operation):
            return getattr(self._client, method)(*args, **kwargs)

    def save_state(
        self, store_name: str, key: str, value: bytes | str, *args: Any, **kwargs: Any
    ) -> Any:
        return self._timed("state_save", "save_state", store_name, key, value, *args, **kwargs)

    def get_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> Any:
        return self._timed("state_get", "get_state", store_name, key, *args, **kwargs)

    def delete_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> Any:
        return self._timed("state_delete", "delete_state", store_name, key, *args, **kwargs)

    def save_bulk_state(self, store_name: str, states: Any, *args: Any, **kwargs: Any) -> Any:
        return self._timed(
            "state_save_bulk", "save_bulk_state", store_name, states, *args, **kwargs
        )

    def get_bulk_state(self, store_name: str, keys: Any, *args: Any, **kwargs: Any) -> Any:
        return self._timed("state_get_bulk", "get_bulk_state", store_name, keys, *args, **kwargs)

    def publish_event(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("publish", "publish_event", *args, **kwargs)

    def publish_events(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("publish_bulk", "publish_events", *args, **kwargs)
