"""Shutdown order of the service, with a fake workflow runtime (no sidecar)."""

from __future__ import annotations

import time
from typing import cast

import pytest
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
