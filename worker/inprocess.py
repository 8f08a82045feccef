"""Workflows run in this process, without a sidecar: the gateway the test harness uses.

It runs the workflows and activities registered with a `WorkflowRuntime` (the worker's own
reporting wrapper and the SDK's coercion included) through the SDK's orchestration executor,
replaying each instance's history as the sidecar would. Time is virtual: a `create_timer`
fires when `advance` moves the clock past it; activity retries fire at once. Work is queued by
the gateway calls and done by `run` (the harness calls it once a message is handled, so that
a workflow's `completed` follows its `started`, as in the real line). Not covered: child
workflows, versioned workflows, and histories (`history` is refused).

Built on the SDK's internals (dapr-ext-workflow 1.18.3's ``_durabletask``): tied to that pin.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dapr.ext.workflow._durabletask.internal.helpers as ph
import dapr.ext.workflow._durabletask.internal.protos as pb
import dapr.ext.workflow._durabletask.internal.timer as timers
from dapr.ext.workflow import WorkflowRuntime
from dapr.ext.workflow._durabletask.internal.shared import to_json
from dapr.ext.workflow._durabletask.worker import _ActivityExecutor, _OrchestrationExecutor

from worker.gateway import InstanceState, json_or_text
from worker.origin import unwrap
from worker.outcomes import Missing, RejectCode, Rejected

log = logging.getLogger(__name__)

_STATUS = {
    pb.ORCHESTRATION_STATUS_COMPLETED: "COMPLETED",
    pb.ORCHESTRATION_STATUS_FAILED: "FAILED",
    pb.ORCHESTRATION_STATUS_TERMINATED: "TERMINATED",
}
_TERMINAL = frozenset({"COMPLETED", "FAILED", "TERMINATED"})


@dataclass
class _Instance:
    instance_id: str
    workflow: str
    encoded_input: str | None
    created_at: datetime
    status: str = "PENDING"
    updated_at: datetime | None = None
    history: list[Any] = field(default_factory=list)
    inbox: list[Any] = field(default_factory=list)  # new events not yet run
    timers: dict[int, datetime] = field(default_factory=dict)
    output: str | None = None
    custom_status: str | None = None
    failure: tuple[str, str] | None = None  # (message, type)
    start_at: datetime | None = None


class InProcessEngine:
    """The `WorkflowGateway` calls the handlers make, served in this process."""

    def __init__(self, runtime: WorkflowRuntime, now: datetime | None = None) -> None:
        self._registry = runtime._WorkflowRuntime__worker._registry  # type: ignore[attr-defined]
        self._logger = logging.getLogger("worker.inprocess.sdk")
        self._instances: dict[str, _Instance] = {}
        self.now = now or datetime.now(UTC)

    # --- what the handlers call ------------------------------------------------------------

    def get_state(self, instance_id: str, *, payloads: bool = True) -> InstanceState | None:
        found = self._instances.get(instance_id)
        if found is None:
            return None
        origin, data = unwrap(json_or_text(found.encoded_input))
        return InstanceState(
            instance_id=instance_id,
            workflow=found.workflow,
            status=found.status,
            created_at=found.created_at,
            last_updated_at=found.updated_at or found.created_at,
            input=data if payloads else None,
            output=json_or_text(found.output) if payloads else None,
            custom_status=json_or_text(found.custom_status),
            failure_message=found.failure[0] if found.failure else None,
            failure_type=found.failure[1] if found.failure else None,
            origin=origin,
        )

    def start(self, workflow: str, instance_id: str, data: Any, start_at: datetime | None) -> None:
        existing = self._instances.get(instance_id)
        if existing is not None and existing.status not in _TERMINAL:
            raise Rejected(
                f"an active workflow with ID {instance_id!r} already exists",
                code=RejectCode.INSTANCE_EXISTS,
            )
        if self._registry.get_orchestrator(workflow) is None:
            raise Rejected(f"workflow {workflow!r} is not registered", code=RejectCode.OTHER)
        encoded = None if data is None else to_json(data)
        found = _Instance(instance_id, workflow, encoded, self.now, start_at=start_at)
        found.inbox = [ph.new_execution_started_event(workflow, instance_id, encoded)]
        self._instances[instance_id] = found

    def raise_event(self, instance_id: str, event_name: str, data: Any) -> None:
        encoded = None if data is None else to_json(data)
        self._live(instance_id).inbox.append(ph.new_event_raised_event(event_name, encoded))

    def suspend(self, instance_id: str, reason: str | None) -> None:
        found = self._live(instance_id)
        found.inbox.append(ph.new_suspend_event())
        found.status, found.updated_at = "SUSPENDED", self.now

    def resume(self, instance_id: str, reason: str | None) -> None:
        found = self._live(instance_id)
        found.inbox.append(ph.new_resume_event())
        found.status, found.updated_at = "RUNNING", self.now

    def terminate(self, instance_id: str, output: Any, recursive: bool) -> None:
        found = self._live(instance_id)
        found.inbox.clear()
        found.timers.clear()
        found.output = None if output is None else to_json(output)
        found.status, found.updated_at = "TERMINATED", self.now

    def purge(self, instance_id: str, recursive: bool) -> None:
        found = self._instances.get(instance_id)
        if found is None:
            raise Missing(instance_id)
        if found.status not in _TERMINAL:
            raise Rejected(f"{instance_id} has not yet completed", code=RejectCode.STATE_FORBIDS)
        del self._instances[instance_id]

    def instance_ids(self, page_size: int = 0) -> Iterator[str]:
        return iter(list(self._instances))

    def history(self, instance_id: str) -> list[Any]:
        raise Rejected("no history in the in-process harness", code=RejectCode.OTHER)

    def _live(self, instance_id: str) -> _Instance:
        found = self._instances.get(instance_id)
        if found is None:
            raise Missing(instance_id)
        if found.status in _TERMINAL:
            raise Rejected(f"{instance_id} is {found.status}", code=RejectCode.STATE_FORBIDS)
        return found

    # --- running -------------------------------------------------------------------------

    def advance(self, by: timedelta) -> None:
        """Move the clock on: timers now due fire (then `run`)."""
        self.now += by
        for found in self._instances.values():
            for timer_id, fire_at in sorted(found.timers.items()):
                if fire_at <= self.now:
                    del found.timers[timer_id]
                    found.inbox.append(timers.new_timer_fired_event(timer_id, fire_at))

    def run(self) -> None:
        """Do all queued work, until every instance waits (for an event, a timer) or ended."""
        while True:
            ready = [f for f in self._instances.values() if self._runnable(f)]
            if not ready:
                return
            for found in ready:
                self._step(found)

    def _runnable(self, found: _Instance) -> bool:
        if not found.inbox or found.status in _TERMINAL:
            return False
        return found.start_at is None or found.start_at <= self.now

    def _step(self, found: _Instance) -> None:
        new = [ph.new_workflow_started_event(self.now), *found.inbox]
        found.inbox = []
        if found.status == "PENDING":
            found.status = "RUNNING"
        executor = _OrchestrationExecutor(self._registry, self._logger)
        result = executor.execute(found.instance_id, found.history, new)
        found.history.extend(new)
        found.updated_at = self.now
        if result.encoded_custom_status is not None:
            found.custom_status = result.encoded_custom_status
        for action in result.actions:
            self._act(found, action)

    def _act(self, found: _Instance, action: Any) -> None:
        if action.HasField("scheduleTask"):
            task = action.scheduleTask
            encoded = task.input.value if task.HasField("input") else None
            found.history.append(ph.new_task_scheduled_event(action.id, task.name, encoded))
            found.inbox.append(self._activity(found.instance_id, action.id, task.name, encoded))
        elif action.HasField("createTimer"):
            timer = action.createTimer
            fire_at = timer.fireAt.ToDatetime(tzinfo=UTC)
            found.history.append(timers.new_timer_created_event(action.id, timer.fireAt))
            if timer.HasField("activityRetry") or timer.HasField("childWorkflowRetry"):
                found.inbox.append(timers.new_timer_fired_event(action.id, timer.fireAt))
            elif not timers.is_optional_timer_action(action):
                found.timers[action.id] = fire_at
        elif action.HasField("completeWorkflow"):
            self._complete(found, action.completeWorkflow)
        else:
            raise NotImplementedError(
                f"the in-process harness cannot run {action.WhichOneof('workflowActionType')}"
            )

    def _activity(self, instance_id: str, task_id: int, name: str, encoded: str | None) -> Any:
        fn = self._registry.get_activity(name)
        executor = _ActivityExecutor(self._logger)
        try:
            if fn is not None and inspect.iscoroutinefunction(fn):
                output = asyncio.run(
                    executor.execute_async(fn, instance_id, name, task_id, encoded)
                )
            else:
                output = executor.execute(fn, instance_id, name, task_id, encoded)
        except Exception as error:
            log.info("activity %s of %s failed: %s", name, instance_id, error)
            return ph.new_task_failed_event(task_id, error)
        return ph.new_task_completed_event(task_id, output)

    def _complete(self, found: _Instance, done: Any) -> None:
        status = done.workflowStatus
        if status == pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW:
            encoded = done.result.value if done.HasField("result") else None
            found.encoded_input, found.history, found.timers = encoded, [], {}
            carried = list(done.carryoverEvents)
            found.inbox = [
                ph.new_execution_started_event(found.workflow, found.instance_id, encoded),
                *carried,
            ]
            return
        found.status = _STATUS.get(status, "FAILED")
        found.output = done.result.value if done.HasField("result") else None
        if done.HasField("failureDetails"):
            details = done.failureDetails
            found.failure = (details.errorMessage, details.errorType)
        found.timers.clear()
