"""What can become of a message: done, rejected (drop, never retried) or transient (retry)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class Rejected(Exception):
    """The request can never succeed as sent: reject it, publish the reason, drop it."""

    def __init__(
        self,
        reason: str,
        *,
        status: str | None = None,
        instance_id: str | None = None,
        workflow: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
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
    "no such instance": "unknown instance",
    "not found": "unknown instance",
    "does not exist": "unknown instance",
    "already exists": "instance already exists",
    "has not yet completed": "instance has not finished",
    "not in a terminal state": "instance has not finished",
    "is not running": "instance is not running",
    "unknown workflow": "unknown workflow",
    "no orchestrator": "unknown workflow",
}


@dataclass(frozen=True)
class Classified:
    transient: bool
    reason: str


def classify_rpc_error(error: grpc.RpcError) -> Classified:
    """Decide whether a failed sidecar call is worth retrying."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, None):
        # Dapr wraps several permanent conditions in UNKNOWN/INTERNAL: read the message.
        lowered = details.lower()
        for fragment, label in _PERMANENT_FRAGMENTS.items():
            if fragment in lowered:
                return Classified(transient=False, reason=f"{label}: {details}")
    if code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return Classified(transient=False, reason=f"{code.name}: {details}")
    name = code.name if code is not None else "error"
    return Classified(
        transient=code in _TRANSIENT_CODES or code is None, reason=f"{name}: {details}"
    )


def raise_classified(error: grpc.RpcError, doing: str, instance_id: str | None = None) -> None:
    """Re-raise a sidecar error as Rejected (naming ``instance_id``) or Transient."""
    result = classify_rpc_error(error)
    if result.transient:
        raise Transient(f"{doing}: {result.reason}") from error
    raise Rejected(f"{doing}: {result.reason}", instance_id=instance_id) from error
