"""OpenTelemetry's SDK for the worker's traces, configured by the standard ``OTEL_*`` variables.

Off unless configured: tracing is on when ``OTEL_TRACES_EXPORTER`` names exporters (other than
``none``), or, with it unset, when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` turns it off whatever else
is set. Exporters: ``otlp`` (``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` ``http/protobuf``, the
default, or ``grpc``), ``otlp_proto_http``, ``otlp_proto_grpc``, ``zipkin`` (Zipkin's JSON v2
API; ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``) and ``console``. The service name is
``OTEL_SERVICE_NAME``, else the worker's app-id; ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*`` (the batch span processor) are read by the
SDK as documented. The worker's own spans are made through OpenTelemetry's API
(`worker.traces`); this module only installs the SDK that records and exports them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_ALIASES = {"zipkin": "zipkin_json"}
_ENTRY_POINTS = "opentelemetry_traces_exporter"


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters ``env`` asks for (entry-point names); empty: tracing stays off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        named = "otlp" if endpoint else ""
    names = [n.strip().lower() for n in named.split(",") if n.strip()]
    if not names or names == ["none"]:
        return []
    resolved = []
    for name in names:
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in _PROTOCOLS:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: use one of {sorted(_PROTOCOLS)}"
                )
            name = _PROTOCOLS[protocol]
        resolved.append(_ALIASES.get(name, name))
    return resolved


def _exporter(name: str) -> SpanExporter:
    found = entry_points(group=_ENTRY_POINTS, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=_ENTRY_POINTS))
        raise ValueError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} installed; known: {known}")
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def configure(app_id: str, env: Mapping[str, str]) -> TracerProvider | None:
    """Install OpenTelemetry's SDK as the global tracer provider when ``env`` configures
    tracing; None (nothing installed, the API stays a no-op) when it does not."""
    provider = build(app_id, env)
    if provider is None:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME

    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: exporting to %s as service %s",
        ", ".join(exporter_names(env)),
        provider.resource.attributes.get(SERVICE_NAME),
    )
    return provider


def build(app_id: str, env: Mapping[str, str]) -> TracerProvider | None:
    """The tracer provider ``env`` asks for (exporters, each behind a batch span processor),
    not installed; None when tracing is off."""
    names = exporter_names(env)
    if not names:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    attributes = {} if named else {SERVICE_NAME: app_id}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def shutdown(provider: TracerProvider | None) -> None:
    """Export what is left and stop (at the worker's stop)."""
    if provider is None:
        return
    try:
        provider.shutdown()
    except Exception:
        log.warning("tracing: could not flush the last spans", exc_info=True)
