"""Shutdown order of the service, with a fake workflow runtime (no sidecar)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast

import pytest
from dapr.conf import settings as dapr_settings
from dapr.ext.workflow import WorkflowRuntime

from worker.config import Settings
from worker.service import WorkerService


class _FakeRuntime:
    def __init__(self) -> None:
        self.shut_down_at: float | None = None

    def shutdown(self) -> None:
        self.shut_down_at = time.monotonic()


def _stopped_service(settle: float) -> tuple[_FakeRuntime, float]:
    """Stop a service holding a fake runtime; returns the runtime and when stop() returned."""
    service = WorkerService(Settings(stop_settle_seconds=settle))
    runtime = _FakeRuntime()
    service._runtime = cast(WorkflowRuntime, runtime)
    service.stop()
    return runtime, time.monotonic()


@pytest.mark.parametrize("settle", [0.3, 0.6])
def test_stop_waits_the_settle_time_after_closing_the_workflow_stream(settle: float) -> None:
    runtime, returned_at = _stopped_service(settle)
    assert runtime.shut_down_at is not None
    assert returned_at - runtime.shut_down_at >= settle


def test_stop_without_settle_returns_at_once() -> None:
    runtime, returned_at = _stopped_service(0)
    assert runtime.shut_down_at is not None
    assert returned_at - runtime.shut_down_at < 0.3


def test_stop_twice_shuts_the_runtime_down_once() -> None:
    service = WorkerService(Settings(stop_settle_seconds=0))
    runtime = _FakeRuntime()
    service._runtime = cast(WorkflowRuntime, runtime)
    service.stop()
    first = runtime.shut_down_at
    service.stop()
    assert runtime.shut_down_at == first


def test_healthy_from_the_start_until_stopping() -> None:
    """The sidecar turns its subscriptions on at its first healthy probe: a worker that said
    "unhealthy" until its runtime was up lost what was published in the next 5 s."""
    service = WorkerService(Settings(stop_settle_seconds=0))
    assert service._healthy()
    service.stop()
    assert not service._healthy()


class _Metadata(BaseHTTPRequestHandler):
    body: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        payload = json.dumps(self.body).encode()
        self.send_response(200 if self.path == "/v1.0/metadata" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def sidecar_metadata(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Metadata]]:
    """A stand-in for the sidecar's metadata endpoint, serving ``_Metadata.body``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(dapr_settings, "DAPR_RUNTIME_HOST", "127.0.0.1")
    monkeypatch.setattr(dapr_settings, "DAPR_HTTP_PORT", server.server_address[1])
    yield _Metadata
    server.shutdown()


def test_ready_waits_for_the_first_probe_when_the_sidecar_probes(
    sidecar_metadata: type[_Metadata],
) -> None:
    sidecar_metadata.body = {"appConnectionProperties": {"health": {"healthProbeInterval": "1s"}}}
    service = WorkerService(Settings())
    threading.Timer(0.4, service._healthy).start()  # the sidecar probes after 0.4 s
    began = time.monotonic()
    service._wait_until_delivering()
    assert time.monotonic() - began >= 0.4
    assert service._probed.is_set()


def test_ready_does_not_wait_when_the_sidecar_does_not_probe(
    sidecar_metadata: type[_Metadata],
) -> None:
    sidecar_metadata.body = {"appConnectionProperties": {"port": 50051}}
    service = WorkerService(Settings())
    began = time.monotonic()
    service._wait_until_delivering()
    assert time.monotonic() - began < 0.3
    assert not service._probed.is_set()
