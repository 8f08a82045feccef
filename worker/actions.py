"""The control actions of `workflow.control`, declared once.

One row per action: its message model (in `worker.messages`), the statuses it is allowed from
and the status it leaves (a change), or what it reads (a read), the gateway call, the status
event it produces, whether the console offers it in bulk, and its help text. Everything else is
derived from this table: the union the line validates with (and so the schemas), the control
handler, the console's actions, bulk form, routes and API bodies, wfctl's commands and what the
watch reports when someone else makes the change.

This module imports no surface (console, CLI, telemetry) and, at run time, not the gateway
(wfctl imports it, and needs no workflow SDK).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, Union, get_args

from pydantic import Field, TypeAdapter

from worker.events import EventType, StatusEvent
from worker.messages import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ActionMessage,
    BulkOnly,
    History,
    Purge,
    Query,
    Resume,
    Suspend,
    Terminate,
)

if TYPE_CHECKING:
    from worker.gateway import InstanceState, WorkflowGateway

M = TypeVar("M", bound=ActionMessage)

PURGED = "PURGED"  # the status a purged instance is reported with (no runtime status)


@dataclass(frozen=True)
class Transition:
    """The status change an action makes: allowed from these statuses, leaves ``target``."""

    allowed_from: frozenset[str]
    target: str
    why_not: str  # said when the instance's status forbids it

    @property
    def removes(self) -> bool:
        """The instance is gone afterwards (a purge)."""
        return self.target == PURGED


@dataclass(frozen=True)
class Action(Generic[M]):
    """One control action. Exactly one of ``change`` (with ``call``) and ``read`` is set."""

    model: type[M]
    event: EventType  # the status event it produces
    help: str  # one sentence, for wfctl, the console's API and the docs
    change: Transition | None = None
    call: Callable[[WorkflowGateway, M], None] | None = None  # makes the change
    read: Callable[[WorkflowGateway, M, InstanceState], dict[str, Any]] | None = None
    payloads: bool = False  # a read: the instance's state with its input, output, custom status
    bulk: bool = False  # the console offers it on a filtered set of instances
    follows: bool = False  # wfctl may wait on to the instance's end (--until finished)
    examples: tuple[str, ...] = ()  # wfctl command lines

    def __post_init__(self) -> None:
        if (self.change is None) == (self.read is None) or (self.change is None) != (
            self.call is None
        ):
            raise ValueError(f"{self.name}: give a change with its call, or a read")

    @property
    def name(self) -> str:
        """The value of the message's field ``action``."""
        (name,) = get_args(self.model.model_fields["action"].annotation)
        return str(name)

    @property
    def fields(self) -> tuple[str, ...]:
        """The message's fields besides ``action`` and ``instance_id``, one-instance form."""
        return tuple(
            name
            for name, info in self.model.model_fields.items()
            if name not in ("action", "instance_id")
            and not any(isinstance(m, BulkOnly) for m in info.metadata)
        )

    @property
    def has_bulk_message(self) -> bool:
        """Its message may leave out ``instance_id`` (a bulk form of its own, e.g. purge)."""
        return not self.model.model_fields["instance_id"].is_required()

    @property
    def takes_reason(self) -> bool:
        return "reason" in self.model.model_fields

    def echoed(self, request: M) -> dict[str, Any]:
        """The message's fields its status event repeats (reason, output, ...)."""
        return {
            name: getattr(request, name)
            for name in self.fields
            if name in StatusEvent.model_fields and name != "instance_id"
        }

    def allows(self, status: str) -> bool:
        """Whether an instance in ``status`` can take it (the handler checks again)."""
        return self.change is not None and status in self.change.allowed_from


def _query(_: WorkflowGateway, __: Query, state: InstanceState) -> dict[str, Any]:
    return {"input": state.input, "output": state.output, "custom_status": state.custom_status}


def _history(gateway: WorkflowGateway, request: History, _: InstanceState) -> dict[str, Any]:
    from worker.timeline import build_timeline, run_input

    history = gateway.history(request.instance_id)  # Missing when purged meanwhile
    return {"input": run_input(history), "timeline": build_timeline(history)}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        Suspend,
        EventType.SUSPENDED,
        "Suspend a running instance.",
        change=Transition(
            frozenset({"RUNNING", "PENDING"}),
            "SUSPENDED",
            "only a running instance can be suspended",
        ),
        call=lambda g, r: g.suspend(r.instance_id, r.reason),
        bulk=True,
        examples=("wfctl suspend counter-1 --reason maintenance --wait",),
    ),
    Action(
        Resume,
        EventType.RESUMED,
        "Resume a suspended instance.",
        change=Transition(
            frozenset({"SUSPENDED"}), "RUNNING", "only a suspended instance can be resumed"
        ),
        call=lambda g, r: g.resume(r.instance_id, r.reason),
        bulk=True,
        follows=True,
        examples=("wfctl resume counter-1 --wait", "wfctl resume order-7 --wait --until finished"),
    ),
    Action(
        Terminate,
        EventType.TERMINATED,
        "Terminate an instance that has not finished.",
        change=Transition(ACTIVE_STATUSES, "TERMINATED", "it has already finished"),
        call=lambda g, r: g.terminate(r.instance_id, r.output, r.recursive),
        bulk=True,
        examples=(
            "wfctl terminate counter-1 --reason done --wait",
            'wfctl terminate build-9 --output \'{"cancelled_by": "ci"}\' --no-recursive',
        ),
    ),
    Action(
        Purge,
        EventType.PURGED,
        "Purge a finished instance.",
        change=Transition(TERMINAL_STATUSES, PURGED, "only a finished instance can be purged"),
        call=lambda g, r: g.purge(r.instance_id, r.recursive),
        bulk=True,
        examples=(
            "wfctl purge order-7 --wait",
            "wfctl purge --older-than 720h --wait            # bulk: finished > 30 days ago",
            "wfctl purge --status FAILED --status TERMINATED --wait",
            "wfctl purge --all --wait                        # bulk: every finished instance",
        ),
    ),
    Action(
        Query,
        EventType.STATE,
        "Publish the instance's current state.",
        read=_query,
        payloads=True,
        examples=("wfctl query order-7", "wfctl query order-7 | jq -r .status"),
    ),
    Action(
        History,
        EventType.HISTORY,
        "Publish the instance's history as a timeline.",
        read=_history,
        examples=(
            "wfctl history order-7",
            "wfctl history order-7 | jq '.timeline[] | [.kind, .name, .outcome, .duration_ms]'",
        ),
    ),
)

BY_NAME: Mapping[str, Action[Any]] = {a.name: a for a in ACTIONS}
BULK_ACTIONS: tuple[str, ...] = tuple(a.name for a in ACTIONS if a.bulk)

ControlAction: Any = Annotated[
    Union[tuple(a.model for a in ACTIONS)],  # noqa: UP007  (built from the table)
    Field(discriminator="action"),
]
"""`workflow.control`: one of the actions, chosen by the field `action`."""

control_adapter: TypeAdapter[ActionMessage] = TypeAdapter(ControlAction)
"""`workflow.control`: suspend, resume, terminate, purge (one or in bulk), query, history."""


def observed(was: str, status: str) -> Action[Any] | None:
    """The action someone else made, told by an instance's status going from ``was`` to
    ``status``. RUNNING is also where a start leads: it tells an action only from a status
    that action is allowed from (a resume: from SUSPENDED)."""
    for action in ACTIONS:
        change = action.change
        if change is None or change.target != status or was == status:
            continue
        if was in change.allowed_from or status != "RUNNING":
            return action
    return None
