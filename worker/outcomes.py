"""What can become of a message: done, rejected (drop, never retried) or transient (retry)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from worker.events import RejectCode

__all__ = [
    "Classified",
    "Missing",
    "RejectCode",
    "Rejected",
    "Transient",
    "classify_rpc_error",
    "raise_classified",
    "retry_until_done",
]

log = logging.getLogger(__name__)

# Backoff of `retry_until_done`: doubling from the first delay up to the last, like the
# sidecar's own redelivery policy (components/*/resiliency.yaml).
FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 10.0


class Rejected(Exception):
    """The request can never succeed as sent: reject it, publish the reason, drop it."""

    def __init__(
        self,
        reason: str,
        *,
        code: RejectCode = RejectCode.OTHER,
        status: str | None = None,
        instance_id: str | None = None,
        workflow: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status
        self.instance_id = instance_id
        self.workflow = workflow


class Missing(Exception):
    """The instance a message is about does not exist, or not yet: it may be started in a
    moment (the start was published just before). The pipeline parks the message for a grace
    period, then rejects it."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"unknown instance {instance_id}")
        self.instance_id = instance_id


class Transient(Exception):
    """A fault that may pass (sidecar down, deadline, overload): ask for redelivery."""


# Codes that say "try again later". Anything else from the sidecar is about the request.
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

# Dapr reports several permanent conditions with UNKNOWN/INTERNAL and a message; these
# fragments (lower case) turn such an error into a rejection with a readable reason.
_PERMANENT_FRAGMENTS = {
    "no such instance": ("unknown instance", RejectCode.UNKNOWN_INSTANCE),
    "not found": ("unknown instance", RejectCode.UNKNOWN_INSTANCE),
    "does not exist": ("unknown instance", RejectCode.UNKNOWN_INSTANCE),
    "already exists": ("instance already exists", RejectCode.INSTANCE_EXISTS),
    "has not yet completed": ("instance has not finished", RejectCode.STATE_FORBIDS),
    "not in a terminal state": ("instance has not finished", RejectCode.STATE_FORBIDS),
    "is not running": ("instance is not running", RejectCode.STATE_FORBIDS),
    "unknown workflow": ("unknown workflow", RejectCode.UNKNOWN_WORKFLOW),
    "no orchestrator": ("unknown workflow", RejectCode.UNKNOWN_WORKFLOW),
}
_PERMANENT_CODES = {
    grpc.StatusCode.NOT_FOUND: RejectCode.UNKNOWN_INSTANCE,
    grpc.StatusCode.ALREADY_EXISTS: RejectCode.INSTANCE_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: RejectCode.STATE_FORBIDS,
    grpc.StatusCode.INVALID_ARGUMENT: RejectCode.SIDECAR_REFUSED,
    grpc.StatusCode.OUT_OF_RANGE: RejectCode.SIDECAR_REFUSED,
    grpc.StatusCode.PERMISSION_DENIED: RejectCode.SIDECAR_REFUSED,
    grpc.StatusCode.UNAUTHENTICATED: RejectCode.SIDECAR_REFUSED,
    grpc.StatusCode.UNIMPLEMENTED: RejectCode.SIDECAR_REFUSED,
}


@dataclass(frozen=True)
class Classified:
    transient: bool
    reason: str
    code: RejectCode = RejectCode.SIDECAR_REFUSED  # when not transient


def classify_rpc_error(error: grpc.RpcError) -> Classified:
    """Decide whether a failed sidecar call is worth retrying."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, None):
        # Dapr wraps several permanent conditions in UNKNOWN/INTERNAL: read the message.
        lowered = details.lower()
        for fragment, (label, reject_code) in _PERMANENT_FRAGMENTS.items():
            if fragment in lowered:
                return Classified(False, f"{label}: {details}", reject_code)
    if code is not None and code in _PERMANENT_CODES:
        return Classified(False, f"{code.name}: {details}", _PERMANENT_CODES[code])
    name = code.name if code is not None else "error"
    return Classified(
        transient=code in _TRANSIENT_CODES or code is None, reason=f"{name}: {details}"
    )


def raise_classified(error: grpc.RpcError, doing: str, instance_id: str | None = None) -> None:
    """Re-raise a sidecar error as Rejected (naming ``instance_id``) or Transient."""
    result = classify_rpc_error(error)
    if result.transient:
        raise Transient(f"{doing}: {result.reason}") from error
    raise Rejected(
        f"{doing}: {result.reason}", code=result.code, instance_id=instance_id
    ) from error


def retry_until_done(attempt: Callable[[], None], stopping: threading.Event, doing: str) -> bool:
    """Call ``attempt`` until it raises no `Transient`, with backoff; False when ``stopping``
    is set first. For work a delivery's answer no longer covers (it was acknowledged)."""
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            attempt()
            return True
        except Transient as error:
            log.warning("%s: %s (trying again)", doing, error)
        if stopping.wait(delay):
            log.error("stopped before %s succeeded", doing)
            return False
        delay = min(delay * 2, MAX_RETRY_SECONDS)
