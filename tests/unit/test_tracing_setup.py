"""The OpenTelemetry SDK set-up: on only when OTEL_* configures it, OTLP by default."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

from worker.telemetry import tracing


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["otlp_proto_grpc"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin,console"}, ["zipkin_json", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
    ],
)
def test_which_exporters(env: dict[str, str], names: list[str]) -> None:
    assert tracing.exporter_names(env) == names


def test_off_builds_nothing() -> None:
    assert tracing.build("app", {}) is None
    assert tracing.configure("app", {}) is None
    tracing.shutdown(None)


def test_a_bad_setting_is_said_at_start() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "x"})
    with pytest.raises(ValueError, match="no exporter 'jaeger'"):
        tracing.build("app", {"OTEL_TRACES_EXPORTER": "jaeger"})


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps each export request it is sent."""

    received: ClassVar[list[tuple[str, ExportTraceServiceRequest]]] = []
    arrived: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append((self.path, request))
        type(self).arrived.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[int]:
    _Collector.received = []
    _Collector.arrived = threading.Event()
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_the_default_exports_otlp_over_http_as_the_app_id(
    collector: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only an endpoint set, spans go out as OTLP/HTTP protobuf to <endpoint>/v1/traces,
    under the service name of the worker's app-id."""
    endpoint = f"http://127.0.0.1:{collector}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracing.build("my-worker", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("process x", kind=SpanKind.CONSUMER):
        pass
    tracing.shutdown(provider)  # flushes
    assert _Collector.arrived.wait(10)
    path, request = _Collector.received[0]
    assert path == "/v1/traces"
    [resource_spans] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "my-worker"
    [span] = resource_spans.scope_spans[0].spans
    assert span.name == "process x"


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders")
    provider = tracing.build(
        "my-worker", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orders"}
    )
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "orders"
    finally:
        provider.shutdown()
