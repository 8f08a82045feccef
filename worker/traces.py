"""Traces through the worker, with OpenTelemetry's API: W3C trace context in, spans, context out.

A message's handling is a CONSUMER span (``process <topic>``) that continues the trace whose
``traceparent`` the sidecar delivered inside the CloudEvent. Under it: a CLIENT span for each
workflow call to the sidecar (``workflow <operation>``) and for each state call (the gRPC
method's name), and a PRODUCER span for each status event published (``publish <topic>``).
Every sidecar call carries the current ``traceparent`` in its gRPC metadata, so the sidecar's
own spans join the trace; a workflow start also hands it to the workflow engine
(``parentTraceContext``), and every status event carries it as CloudEvent extensions.

Spans are made only inside the handling of a message (or a report that carries a message's
trace context): background work (the watch, the parking lot's index) starts no traces.

Without an SDK (`worker.telemetry.tracing` installs one when configured) the API makes no
spans: the received trace context is passed through as it is, to the sidecar calls, the
workflow start and the status events, and that costs a few microseconds per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SCOPE = "dapr-workflow-worker"
MESSAGING_SYSTEM = "dapr"
INSTANCE_ID = "workflow.instance_id"  # span attribute: the workflow instance a span is about

T = TypeVar("T")

tracer = trace.get_tracer(SCOPE)
_propagator = TraceContextTextMapPropagator()


def context_from(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The trace context of a W3C ``traceparent`` (and ``tracestate``); None when there is
    none or it is not valid."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    found = _propagator.extract(carrier)
    if not trace.get_current_span(found).get_span_context().is_valid:
        return None
    return found


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``): empty
    outside a trace."""
    headers: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        _propagator.inject(headers)
    return headers


def in_trace() -> bool:
    return trace.get_current_span().get_span_context().is_valid


_sdk = False


def sdk_installed() -> bool:
    """Whether an SDK records spans (a tracer provider was installed: that happens once)."""
    global _sdk
    if not _sdk:
        _sdk = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _sdk


def _spanning() -> bool:
    """Whether to make a child span here: inside a trace, with an SDK to record it."""
    return in_trace() and sdk_installed()


@contextmanager
def resumed(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block in the trace context of ``headers`` (``traceparent``/``tracestate``,
    as `carrier` gives them), when they hold one."""
    found = None
    if headers:
        parent, state = headers.get("traceparent"), headers.get("tracestate")
        found = context_from(
            parent if isinstance(parent, str) else None,
            state if isinstance(state, str) else None,
        )
    if found is None:
        yield
        return
    token = otel_context.attach(found)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def processing(
    topic: str, message_id: str, traceparent: str = "", tracestate: str = ""
) -> Iterator[Span]:
    """The CONSUMER span of one message's handling: a child of the trace the message carries,
    else the root of a new one."""
    parent = context_from(traceparent, tracestate)
    if not sdk_installed():  # no spans to make: only the received context, passed through
        if parent is None and not in_trace():
            yield trace.INVALID_SPAN
            return
        token = otel_context.attach(parent if parent is not None else Context())
        try:
            yield trace.get_current_span()
        finally:
            otel_context.detach(token)
        return
    with tracer.start_as_current_span(
        f"process {topic}",
        context=parent if parent is not None else Context(),
        kind=SpanKind.CONSUMER,
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": MESSAGING_SYSTEM,
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": topic,
                    "messaging.message.id": message_id,
                }
            )
        yield span


def tag_instance(instance_id: str | None, span: Span | None = None) -> None:
    """Note the workflow instance ``span`` (default: the current one) is about."""
    if instance_id:
        target = span or trace.get_current_span()
        if target.is_recording():
            target.set_attribute(INSTANCE_ID, instance_id)


def traced(name: str, fn: Callable[[], T], attributes: Mapping[str, str | None]) -> Callable[[], T]:
    """``fn`` run in a CLIENT span ``name`` (inside a trace only); ``attributes`` that are
    None are left out."""

    def run() -> T:
        if not _spanning():
            return fn()
        given = {k: v for k, v in attributes.items() if v is not None}
        with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=given):
            return fn()

    return run


@contextmanager
def publishing(
    topic: str, event_id: str, event_type: str, instance_id: str | None
) -> Iterator[None]:
    """The PRODUCER span of one published status event, inside a trace only."""
    if not _spanning():
        yield
        return
    attributes = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.id": event_id,
        "cloudevents.event_id": event_id,
        "cloudevents.event_type": event_type,
    }
    if instance_id:
        attributes[INSTANCE_ID] = instance_id
    with tracer.start_as_current_span(
        f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        yield


def trace_id() -> str | None:
    """The current trace id in hex, None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def _with_trace(details: Any, headers: Mapping[str, str]) -> Any:
    metadata = [
        (k, v)
        for k, v in (details.metadata or ())
        if k not in ("traceparent", "tracestate", "grpc-trace-bin")
    ]
    metadata.extend(headers.items())
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _method_name(method: str | bytes) -> str:
    text = method.decode() if isinstance(method, bytes) else method
    return text.lstrip("/")


class Propagation(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Puts the current ``traceparent`` into every unary call's gRPC metadata, so the
    sidecar's spans join the trace. ``spans``: also a CLIENT span per call, named by its gRPC
    method (for clients whose calls have no span of their own)."""

    def __init__(self, *, spans: bool = False) -> None:
        self._spans = spans

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        current = trace.get_current_span()
        if not current.get_span_context().is_valid:
            return continuation(client_call_details, request)
        if not (self._spans and sdk_installed()):
            return continuation(_with_trace(client_call_details, carrier()), request)
        method = _method_name(client_call_details.method)
        service, _, name = method.rpartition("/")
        with tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        ) as span:
            outcome = continuation(_with_trace(client_call_details, carrier()), request)
            code = outcome.code() if hasattr(outcome, "code") else None
            if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_status(Status(StatusCode.ERROR, code.name))
            return outcome
