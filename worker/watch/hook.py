"""Learns of changes to running instances the moment the sidecar hands them to this app.

daprd delivers every change to a running instance (suspend, resume, terminate, an event
raised, a new run) to the app's workflow stream as new history events of a work item. The SDK
(1.18.3) handles them inside its worker and offers no callback, so this wraps the worker's
private ``_execute_orchestrator`` and passes each instance id on after the work item was run.
That is an SDK internal: if it moves, `install` says so and the watch carries on with its sweep
alone (changes then reach the feed within ``watch_recheck_seconds`` instead of at once).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dapr.ext.workflow import WorkflowRuntime

from worker.origin import unwrap
from worker.watch.watcher import hinted

log = logging.getLogger(__name__)


def install(
    runtime: WorkflowRuntime,
    on_change: Callable[[str, list[datetime], str | None], None],
    on_worker_start: Callable[[str], None] = lambda _: None,
) -> bool:
    """Call ``on_change(instance_id, raised_at, status)`` after each work item that changes
    an instance (``raised_at``: when the events in it were raised; ``status``: the one its
    last start, suspend, resume or terminate gives it), and ``on_worker_start`` for a run the
    worker's own start message made (its handler reports it: nothing to check)."""
    sdk_worker = getattr(runtime, "_WorkflowRuntime__worker", None)
    execute = getattr(sdk_worker, "_execute_orchestrator", None)
    if sdk_worker is None or execute is None:
        log.warning("watch: the SDK's workflow worker has moved; watching by sweep only")
        return False

    met = _Recent()

    def execute_and_tell(request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(request, *args, **kwargs)
        finally:
            try:
                _tell(request, met, on_change, on_worker_start)
            except Exception:  # never let the watch break workflow execution
                log.debug("watch: could not read a work item", exc_info=True)

    sdk_worker._execute_orchestrator = execute_and_tell
    return True


def _tell(
    request: Any,
    met: _Recent,
    on_change: Callable[[str, list[datetime], str | None], None],
    on_worker_start: Callable[[str], None],
) -> None:
    kinds = [event.WhichOneof("eventType") for event in request.newEvents]
    wanted, raised = hinted(kinds)
    # A rerun's first work item carries its copied start among the past events, and a restart
    # meets running instances mid-way: the first work item of an instance this process meets
    # is looked at, whatever it holds.
    first = met.first(request.instanceId)
    log.debug("watch: work item for %s: %s", request.instanceId, kinds)
    if not (wanted or first):
        return  # steps finishing: nothing the feed reports
    # Only a start in this work item is a new run; once met, a start among the past events is
    # the same run's (what else the work item carries is a change of its own).
    by_worker = _started_by_worker(request, past=first)
    if by_worker:
        on_worker_start(request.instanceId)
    changed = any(kind in _STATUS_AFTER and kind != "executionStarted" for kind in kinds)
    if not by_worker or raised or changed:
        statuses = [_STATUS_AFTER[kind] for kind in kinds if kind in _STATUS_AFTER]
        status = statuses[-1] if statuses else None
        on_change(request.instanceId, _raised_at(request) if raised else [], status)


# The status each of these gives an instance: a start (a new run), and what someone does to a
# running instance (the worker too: the watch leaves what it noted as its own to its handler,
# see `worker.expectations`).
_STATUS_AFTER = {
    "executionStarted": "RUNNING",
    "executionSuspended": "SUSPENDED",
    "executionResumed": "RUNNING",
    "executionTerminated": "TERMINATED",
}


def _raised_at(request: Any) -> list[datetime]:
    return [
        event.timestamp.ToDatetime(tzinfo=UTC)
        for event in request.newEvents
        if event.WhichOneof("eventType") == "eventRaised"
    ]


class _Recent:
    """The instance ids this process has met lately (bounded)."""

    def __init__(self, size: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first(self, instance_id: str) -> bool:
        """Whether ``instance_id`` is met now for the first time (lately)."""
        with self._lock:
            if instance_id in self._ids:
                self._ids.move_to_end(instance_id)
                return False
            self._ids[instance_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


def _started_by_worker(request: Any, *, past: bool) -> bool:
    """Whether the work item starts a run that the worker's own start message made (its
    handler reports it); ``past``: look among the past events too."""
    events = (*request.newEvents, *request.pastEvents) if past else request.newEvents
    for event in events:
        if event.WhichOneof("eventType") != "executionStarted":
            continue
        started = event.executionStarted
        if not started.HasField("input"):
            return False
        try:
            origin, _ = unwrap(json.loads(started.input.value))
        except ValueError:
            return False
        return origin is not None and origin.started(request.instanceId)
    return False  # no start in it
