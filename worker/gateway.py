"""The one place that calls the sidecar's workflow API.

Every call has a deadline, and every failure leaves as `Rejected` or `Transient`
(see `worker.outcomes`). Most calls go through `DaprWorkflowClient`. A few go to the same
sidecar API through the SDK's generated stub, because the 1.18 client cannot express them:
suspend/resume with a reason, raise/terminate with a falsy payload (the client drops
``false``, ``0``, ``{}``), listing instance ids, and a start that carries the trace context.
Each call is a CLIENT span of the current trace (`worker.traces`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import grpc
from dapr.conf import settings as dapr_settings
from dapr.ext.workflow import DaprWorkflowClient
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as stubs
from dapr.ext.workflow._durabletask.internal.history_events_pb2 import HistoryEvent
from dapr.ext.workflow._durabletask.internal.orchestration_pb2 import TraceContext
from dapr.ext.workflow._durabletask.internal.shared import to_json
from google.protobuf import timestamp_pb2, wrappers_pb2

from worker import traces
from worker.instruments import NO_INSTRUMENTS, Instruments, timed
from worker.logcontext import sdk_logger_options
from worker.messages import ACTIVE_STATUSES, TERMINAL_STATUSES
from worker.origin import Origin, unwrap
from worker.outcomes import Missing, Transient, raise_classified

T = TypeVar("T")

# Ids per ListInstanceIDs call. On Redis daprd answers every call with a scan of the whole
# keyspace (components-contrib KeysLike), so few large pages cost far less than many small
# ones (measured: 10,500 ids among 93k keys, 21 pages of 500 took 1.8-3.0 s, one of 20,000 0.1 s).
LIST_PAGE = 10_000

__all__ = ["ACTIVE_STATUSES", "TERMINAL_STATUSES", "InstanceState", "WorkflowGateway"]


@dataclass(frozen=True)
class InstanceState:
    """What the sidecar knows about one instance, in plain types."""

    instance_id: str
    workflow: str
    status: str
    created_at: datetime | None
    last_updated_at: datetime | None
    input: Any = None
    output: Any = None
    custom_status: Any = None
    failure_message: str | None = None
    failure_type: str | None = None
    origin: Origin | None = None  # the message that started it, when the worker did

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def json_or_text(raw: str | None) -> Any:
    """``raw`` parsed when it is JSON, else the text itself."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _payload(value: Any) -> wrappers_pb2.StringValue | None:
    return None if value is None else wrappers_pb2.StringValue(value=json.dumps(value))


def _trace_context() -> TraceContext | None:
    """The current W3C trace context as the workflow engine takes it; None outside a trace."""
    headers = traces.carrier()
    if "traceparent" not in headers:
        return None
    state = headers.get("tracestate")
    return TraceContext(
        traceParent=headers["traceparent"],
        traceState=wrappers_pb2.StringValue(value=state) if state else None,
    )


class WorkflowGateway:
    """Workflow-management calls with deadlines and classified errors."""

    _instruments: Instruments = NO_INSTRUMENTS

    def __init__(
        self,
        timeout_seconds: float,
        address: str | None = None,
        sdk_log_level: str = "WARNING",
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self._timeout = timeout_seconds
        self._instruments = instruments
        # The SDK applies this deadline to every unary call of its clients.
        setattr(dapr_settings, "DAPR_API_TIMEOUT_SECONDS", timeout_seconds)  # noqa: B010
        self._client = DaprWorkflowClient(logger_options=sdk_logger_options(sdk_log_level))
        target = address or f"{dapr_settings.DAPR_RUNTIME_HOST}:{dapr_settings.DAPR_GRPC_PORT}"
        # Each call carries the current traceparent, so the sidecar's spans join the trace.
        self._channel = grpc.intercept_channel(grpc.insecure_channel(target), traces.Propagation())
        self._stub = stubs.TaskHubSidecarServiceStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("dapr-api-token", dapr_settings.DAPR_API_TOKEN),)
            if dapr_settings.DAPR_API_TOKEN
            else ()
        )

    def close(self) -> None:
        self._client.close()
        self._channel.close()

    def _call(
        self, operation: str, doing: str, fn: Callable[[], T], instance_id: str | None = None
    ) -> T:
        """``fn()``, its errors classified; a rejection names ``instance_id``. ``operation``
        is the call's short name (start, get, raise, ...), a bounded label for telemetry."""
        fn = traces.traced(
            f"workflow {operation}",
            fn,
            {
                "rpc.system": "grpc",
                "rpc.service": "TaskHubSidecarService",
                "workflow.operation": operation,
                traces.INSTANCE_ID: instance_id,
            },
        )
        try:
            with timed(self._instruments, operation):  # measures the call as it failed
                return fn()
        except grpc.RpcError as error:
            raise_classified(error, doing, instance_id)
            raise  # unreachable: raise_classified always raises
        except TimeoutError as error:
            raise Transient(f"{doing}: timed out") from error

    def get_state(self, instance_id: str, *, payloads: bool = True) -> InstanceState | None:
        state = self._call(
            "get",
            f"get state of {instance_id}",
            lambda: self._client.get_workflow_state(instance_id, fetch_payloads=payloads),
            instance_id,
        )
        if state is None:
            return None
        failure = state.failure_details
        origin, data = unwrap(json_or_text(state.serialized_input))
        return InstanceState(
            instance_id=instance_id,
            workflow=state.name,
            status=state.runtime_status.name,
            created_at=state.created_at,
            last_updated_at=state.last_updated_at,
            input=data,
            output=json_or_text(state.serialized_output),
            custom_status=json_or_text(state.serialized_custom_status),
            failure_message=failure.message if failure else None,
            failure_type=failure.error_type if failure else None,
            origin=origin,
        )

    def start(self, workflow: str, instance_id: str, data: Any, start_at: datetime | None) -> None:
        """What the SDK's ``schedule_new_workflow`` does (its JSON for ``data``, an empty
        version), through the stub: the request also carries the current trace context
        (``parentTraceContext``), so the workflow engine's spans join the trace."""

        def call() -> None:
            scheduled = None
            if start_at is not None:
                scheduled = timestamp_pb2.Timestamp()
                scheduled.FromDatetime(start_at)
            request = pb.CreateInstanceRequest(
                name=workflow,
                instanceId=instance_id,
                input=None if data is None else wrappers_pb2.StringValue(value=to_json(data)),
                scheduledStartTimestamp=scheduled,
                version=wrappers_pb2.StringValue(value=""),
                parentTraceContext=_trace_context(),
            )
            self._stub.StartInstance(request, timeout=self._timeout, metadata=self._metadata)

        self._call("start", f"start {workflow} as {instance_id}", call, instance_id)

    def raise_event(self, instance_id: str, event_name: str, data: Any) -> None:
        request = pb.RaiseEventRequest(
            instanceId=instance_id, name=event_name, input=_payload(data)
        )
        self._call(
            "raise",
            f"raise {event_name} into {instance_id}",
            lambda: self._stub.RaiseEvent(request, timeout=self._timeout, metadata=self._metadata),
            instance_id,
        )

    def suspend(self, instance_id: str, reason: str | None) -> None:
        request = pb.SuspendRequest(instanceId=instance_id, reason=_payload(reason))
        self._call(
            "suspend",
            f"suspend {instance_id}",
            lambda: self._stub.SuspendInstance(
                request, timeout=self._timeout, metadata=self._metadata
            ),
            instance_id,
        )

    def resume(self, instance_id: str, reason: str | None) -> None:
        request = pb.ResumeRequest(instanceId=instance_id, reason=_payload(reason))
        self._call(
            "resume",
            f"resume {instance_id}",
            lambda: self._stub.ResumeInstance(
                request, timeout=self._timeout, metadata=self._metadata
            ),
            instance_id,
        )

    def terminate(self, instance_id: str, output: Any, recursive: bool) -> None:
        request = pb.TerminateRequest(
            instanceId=instance_id, output=_payload(output), recursive=recursive
        )
        self._call(
            "terminate",
            f"terminate {instance_id}",
            lambda: self._stub.TerminateInstance(
                request, timeout=self._timeout, metadata=self._metadata
            ),
            instance_id,
        )

    def purge(self, instance_id: str, recursive: bool) -> None:
        self._call(
            "purge",
            f"purge {instance_id}",
            lambda: self._client.purge_workflow(instance_id, recursive=recursive),
            instance_id,
        )

    def instance_ids(self, page_size: int = LIST_PAGE) -> Iterator[str]:
        """Every instance id the sidecar's app-id has, page by page."""
        token: str | None = None
        while True:
            request = pb.ListInstanceIDsRequest(pageSize=page_size)
            if token:
                request.continuationToken = token
            page = self._call(
                "list",
                "list instances",
                lambda r=request: self._stub.ListInstanceIDs(  # type: ignore[misc]
                    r, timeout=self._timeout, metadata=self._metadata
                ),
            )
            yield from page.instanceIds
            token = page.continuationToken if page.HasField("continuationToken") else None
            if not token:
                return

    def history(self, instance_id: str) -> list[HistoryEvent]:
        """The instance's history events, oldest first. An unknown (or purged) instance is
        `Missing`, like every other call about an instance that may not exist yet."""
        request = pb.GetInstanceHistoryRequest(instanceId=instance_id)

        def fetch() -> list[HistoryEvent]:
            try:
                response = self._stub.GetInstanceHistory(
                    request, timeout=self._timeout, metadata=self._metadata
                )
            except grpc.RpcError as error:
                if getattr(error, "code", lambda: None)() == grpc.StatusCode.NOT_FOUND:
                    raise Missing(instance_id) from error
                raise
            return list(response.events)

        return self._call("history", f"history of {instance_id}", fetch, instance_id)
