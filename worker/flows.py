"""`Flows`: workflows and activities declared with decorators, registered together.

Public as `dapr_workflow_worker.Flows`. The worker registers every `Flows` found at the top level
of a module named in ``WORKER_WORKFLOW_MODULES`` (or the module's ``register(registry)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Protocol):
    """What workflows and activities are registered with (`worker.hosting.WorkflowRegistry`)."""

    def workflow(self, fn: Callable[..., Any], *, name: str | None = None) -> None: ...

    def activity(self, fn: Callable[..., Any], *, name: str | None = None) -> None: ...


class Flows:
    """A set of workflows and activities::

        flows = Flows()

        @flows.workflow(name="invoice")
        def invoice_workflow(ctx: DaprWorkflowContext, order: Order): ...

        @flows.activity
        def make_invoice(ctx: WorkflowActivityContext, order: Order) -> Invoice: ...

    The decorators return the function unchanged (call it, test it, pass it to
    ``ctx.call_activity``); nothing is registered until `register` runs.
    """

    def __init__(self) -> None:
        self._workflows: list[tuple[Callable[..., Any], str]] = []
        self._activities: list[tuple[Callable[..., Any], str | None]] = []

    @overload
    def workflow(self, fn: F, /) -> F: ...

    @overload
    def workflow(self, fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Declare a workflow, started by ``name`` (default: the function's name)."""

        def declare(fn: Any) -> Any:
            workflow_name = name or fn.__name__
            if workflow_name in self.workflow_names:
                raise ValueError(f"workflow {workflow_name!r} is declared twice")
            self._workflows.append((fn, workflow_name))
            return fn

        return declare if fn is None else declare(fn)

    @overload
    def activity(self, fn: F, /) -> F: ...

    @overload
    def activity(self, fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def activity(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Declare an activity; workflows call it by the function (or by ``name``)."""

        def declare(fn: Any) -> Any:
            self._activities.append((fn, name))
            return fn

        return declare if fn is None else declare(fn)

    @property
    def workflow_names(self) -> list[str]:
        return [name for _, name in self._workflows]

    def register(self, registry: Registry) -> None:
        """Register everything declared (a module's ``register(registry)`` may call it)."""
        for fn, activity_name in self._activities:
            registry.activity(fn, name=activity_name)
        for fn, workflow_name in self._workflows:
            registry.workflow(fn, name=workflow_name)
