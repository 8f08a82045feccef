"""Hosts workflows in this app-id, and reports the changes they make themselves.

Every workflow registered here (the built-in samples and any a user registers) is wrapped so
that it reports, through the activity ``worker_report_status``, when it completes or fails
(and when a delayed start begins). Because the report is a workflow activity, the engine
retries it after a crash or SIGKILL of the worker: every change is reported at least once,
under a stable CloudEvent id. A completion report waits until the `started` of its start
message is out, so one instance's events stay in order.

A workflow or activity whose input is annotated with a pydantic model or a dataclass receives
an instance of it (`worker.inputs`), as with the SDK; an input that does not fit fails the
workflow (a `failed` event), and a start message whose input does not fit is rejected before
anything runs (`StartHandler`).

A user module is any importable module with a ``register(registry)`` function, or with
`dapr_workflow_worker.Flows` at module level; name it in ``WORKER_WORKFLOW_MODULES`` (see
docs/how-to/your-workflows.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Generator, Iterable
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import (
    DaprWorkflowContext,
    RetryPolicy,
    WorkflowActivityContext,
    WorkflowRuntime,
)
from pydantic_core import to_jsonable_python

from worker import logcontext, traces
from worker.events import EventType, FailureInfo, StatusEvent, now, stable_event_id
from worker.flows import Flows
from worker.inputs import InputModel, input_model
from worker.logcontext import sdk_logger_options
from worker.origin import Origin, unwrap
from worker.publisher import Outbound, StatusPublisher

log = logging.getLogger(__name__)

REPORT_ACTIVITY = "worker_report_status"
# Keep retrying the report for about an hour while the broker or sidecar is down.
_REPORT_RETRY = RetryPolicy(
    first_retry_interval=timedelta(milliseconds=200),
    max_number_of_attempts=80,
    backoff_coefficient=2.0,
    max_retry_interval=timedelta(seconds=60),
)


class _TrackingContext:
    """The workflow's context, noting whether the workflow continued as new.

    A run started by a message keeps its origin across continue-as-new generations.
    """

    def __init__(self, ctx: DaprWorkflowContext, origin: Origin | None) -> None:
        self._ctx = ctx
        self._origin = origin
        self.continued_as_new = False

    def continue_as_new(self, new_input: Any, *, save_events: bool = False) -> None:
        self.continued_as_new = True
        if self._origin is not None:
            new_input = self._origin.next_generation().wrap(new_input)
        self._ctx.continue_as_new(new_input, save_events=save_events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _report(
    ctx: DaprWorkflowContext,
    workflow: str,
    run: str,
    after: Origin | None = None,
    trace: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    """Schedule the report activity. ``after``: the start message whose `started` goes first;
    ``trace``: the W3C trace context the report's publish joins."""
    event = StatusEvent(
        instance_id=ctx.instance_id,
        workflow=workflow,
        occurred_at=ctx.current_utc_datetime,  # a placeholder: the activity stamps the time
        **fields,
    )
    event_id = stable_event_id(ctx.instance_id, run, event.event.value)
    record = Outbound(event_id, event).to_record()
    if after is not None:
        record["after"] = {"source": after.source, "message_id": after.message_id}
    if trace:
        record["trace"] = dict(trace)  # the start message's trace: the report joins it
    return ctx.call_activity(REPORT_ACTIVITY, input=record, retry_policy=_REPORT_RETRY)


def reporting(fn: Callable[..., Any], name: str) -> Callable[..., Generator[Any, Any, Any]]:
    """Wrap workflow ``fn`` so that its completion or failure is published, and its input
    coerced to the model it is annotated with (a misfit fails the workflow)."""
    takes_input = len(inspect.signature(fn).parameters) > 1
    model = input_model(fn)

    def workflow(ctx: DaprWorkflowContext, data: Any = None) -> Generator[Any, Any, Any]:
        started = ctx.current_utc_datetime.isoformat()  # deterministic under replay
        origin, data = unwrap(data)
        # Event ids of this run: from the message that started it, else from its start time.
        run = origin.run_key() if origin is not None else started
        if origin is not None and origin.generation == 0 and origin.report_start:
            try:
                yield _report(
                    ctx,
                    name,
                    run,
                    event=EventType.STARTED,
                    status="RUNNING",
                    created_at=started,
                    correlation_id=origin.message_id,
                    trace=origin.trace,
                )
            except Exception:
                log.exception("could not report start of %s", ctx.instance_id)
        tracked = _TrackingContext(ctx, origin)

        def ending(event: EventType, **fields: Any) -> Any:
            return _report(
                ctx,
                name,
                run,
                after=origin,
                trace=origin.trace if origin is not None else None,
                event=event,
                status=event.name,
                previous_status="RUNNING",
                created_at=started,
                **fields,
            )

        try:
            if model is not None:
                data = model.coerce(data)
            result = fn(tracked, data) if takes_input else fn(tracked)
            if inspect.isgenerator(result):
                result = yield from result
        except Exception as error:
            failure = FailureInfo(message=str(error), type=type(error).__name__)
            try:
                yield ending(EventType.FAILED, failure=failure)
            except Exception:
                log.exception("could not report failure of %s", ctx.instance_id)
            raise
        if not tracked.continued_as_new:
            try:
                yield ending(EventType.COMPLETED, output=_jsonable(result))
            except Exception:
                log.exception("could not report completion of %s", ctx.instance_id)
        return result

    workflow.__name__ = name
    workflow.__doc__ = fn.__doc__
    return workflow


def _jsonable(value: Any) -> Any:
    """A workflow's output as JSON data (a model or dataclass as the SDK serializes it)."""
    try:
        return to_jsonable_python(value)
    except Exception:
        return value  # left for the event's own validation to refuse (and the log to say)


_SDK_MARKS = ("_dapr_alternate_name", "_activity_registered", "_workflow_registered")


def activity_wrapper(fn: Callable[..., Any], model: InputModel | None) -> Callable[..., Any]:
    """Activity ``fn`` as registered with the SDK: a new function each time (the SDK marks what
    it registers, and refuses it in a second runtime, e.g. a test's), with its input coerced to
    its dataclass ``model`` (the SDK coerces pydantic models itself, seeing ``fn``'s
    signature through the wrapper); sync or async like ``fn``."""
    coerce = model.coerce if model is not None and dataclasses.is_dataclass(model.type) else None
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_activity(ctx: WorkflowActivityContext, *data: Any) -> Any:
            return await fn(ctx, *(coerce(d) if coerce else d for d in data))

        wrapper: Callable[..., Any] = async_activity
    else:

        @functools.wraps(fn)
        def activity(ctx: WorkflowActivityContext, *data: Any) -> Any:
            return fn(ctx, *(coerce(d) if coerce else d for d in data))

        wrapper = activity
    for mark in _SDK_MARKS:
        wrapper.__dict__.pop(mark, None)
    return wrapper


class WorkflowRegistry:
    """What a user module's ``register(registry)`` receives."""

    def __init__(self, runtime: WorkflowRuntime) -> None:
        self._runtime = runtime
        self.workflow_names: list[str] = []
        self.inputs: dict[str, InputModel] = {}  # workflow name: its input's model, if typed
        self.activity_names: list[str] = []

    def workflow(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        """Host workflow ``fn`` under ``name`` (default: the function's name)."""
        workflow_name = name or fn.__name__
        if workflow_name in self.workflow_names:
            raise ValueError(f"workflow {workflow_name!r} is registered twice")
        self._runtime.register_workflow(reporting(fn, workflow_name), name=workflow_name)
        self.workflow_names.append(workflow_name)
        model = input_model(fn)
        if model is not None:
            self.inputs[workflow_name] = model

    def activity(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        """Host activity ``fn``; workflows call it by the function or by ``name``."""
        activity_name = name or fn.__name__
        if activity_name in self.activity_names:
            raise ValueError(f"activity {activity_name!r} is registered twice")
        self._runtime.register_activity(activity_wrapper(fn, input_model(fn)), name=name)
        self.activity_names.append(activity_name)
        if name is not None:  # so that `ctx.call_activity(fn)` finds it by that name
            fn.__dict__["_dapr_alternate_name"] = name


_START_WAIT_SECONDS = 2.0


class StartNotReportedYet(Exception):
    """A workflow finished before its `started` event was out: the report is retried."""


def report_activity(
    publisher: StatusPublisher,
    start_handled: Callable[[str, str], bool | None] | None = None,
) -> Callable[[WorkflowActivityContext, dict[str, Any]], None]:
    """The activity that publishes what a workflow reports (see `build_runtime`)."""

    def report_status(ctx: WorkflowActivityContext, record: dict[str, Any]) -> None:
        # Stamped here, when the change has happened, not with the workflow's replay clock
        # (which is its start time on replay): occurred_at then orders an instance's events.
        outbound = Outbound.from_record(record)
        outbound = Outbound(
            outbound.event_id, outbound.event.model_copy(update={"occurred_at": now()})
        )
        with (
            traces.resumed(record.get("trace")),
            logcontext.about(instance_id=outbound.event.instance_id),
        ):
            _publish_when_started(publisher, outbound, record, start_handled)

    return report_status


def _publish_when_started(
    publisher: StatusPublisher,
    outbound: Outbound,
    record: dict[str, Any],
    start_handled: Callable[[str, str], bool | None] | None,
) -> None:
    after: dict[str, str] | None = record.get("after")
    if after is not None and start_handled is not None:
        # The start message may still be in its handler, its `started` about to go out:
        # wait a little, then let the engine retry the report (durably) if need be.
        deadline = time.monotonic() + _START_WAIT_SECONDS
        while start_handled(after["source"], after["message_id"]) is False:
            if time.monotonic() > deadline:
                raise StartNotReportedYet(f"`started` of {after['message_id']} not out yet")
            time.sleep(0.02)
    publisher.publish(outbound)


def build_runtime(
    publisher: StatusPublisher,
    user_modules: Iterable[str],
    sdk_log_level: str = "WARNING",
    start_handled: Callable[[str, str], bool | None] | None = None,
) -> tuple[WorkflowRuntime, WorkflowRegistry]:
    """A runtime with the report activity, the sample workflows and the user's modules.

    ``start_handled(source, message_id)``: whether that start message was handled (its
    `started` published); a completion report waits for it, so one instance's events stay in
    order.
    """
    from worker import workflows

    runtime = WorkflowRuntime(logger_options=sdk_logger_options(sdk_log_level))

    runtime.register_activity(report_activity(publisher, start_handled), name=REPORT_ACTIVITY)
    registry = WorkflowRegistry(runtime)
    workflows.register(registry)
    for module_name in user_modules:
        load_module(registry, module_name)
    return runtime, registry


def load_module(registry: WorkflowRegistry, module_name: str) -> None:
    """Register what module ``module_name`` declares: its ``register(registry)`` when it has
    one, else every `Flows` at its top level."""
    module = importlib.import_module(module_name)
    register = getattr(module, "register", None)
    if callable(register):
        register(registry)
    else:
        declared = [value for value in vars(module).values() if isinstance(value, Flows)]
        if not declared:
            raise ValueError(
                f"workflow module {module_name!r} has no register(registry) and no Flows"
            )
        for flows in declared:
            flows.register(registry)
    log.info("loaded workflows from %s", module_name)
