"""Typed inputs: a workflow or activity annotated with a pydantic model or a dataclass gets it,
as with the SDK; a start whose input does not fit is rejected before anything runs."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from dapr.ext.workflow import WorkflowRuntime
from pydantic import BaseModel, ValidationError

from tests.unit.fakes import FakeGateway, inbound
from tests.unit.test_hosting import FakeContext, FakeRuntime, Task
from worker.gateway import WorkflowGateway
from worker.handlers.start import StartHandler
from worker.hosting import REPORT_ACTIVITY, WorkflowRegistry, reporting
from worker.idempotency import Begin, Claim
from worker.inputs import InputModel, input_model
from worker.origin import Origin
from worker.outcomes import RejectCode, Rejected
from worker.publisher import Outbound


class Order(BaseModel):
    order_id: str
    amount: float


_SAMPLE = Order(order_id="x", amount=1)


@dataclass
class Parcel:
    weight: float
    label: str = "-"


def order_flow(ctx: Any, order: Order) -> Generator[Any, Any, Order]:
    yield ctx.call_activity("noop", input=order)
    return order


def parcel_flow(ctx: Any, parcel: Parcel) -> float:
    return parcel.weight * 2


def maybe_flow(ctx: Any, order: Order | None) -> str:
    return "none" if order is None else order.order_id


def test_input_model_reads_the_annotation() -> None:
    assert input_model(order_flow) == InputModel(Order)
    assert input_model(parcel_flow) == InputModel(Parcel)
    assert input_model(maybe_flow) == InputModel(Order, optional=True)

    def defaulted(ctx: Any, order: Order = _SAMPLE) -> None: ...

    def untyped(ctx: Any, data: dict[str, Any]) -> None: ...

    def no_input(ctx: Any) -> None: ...

    assert input_model(defaulted) == InputModel(Order, optional=True)
    assert input_model(untyped) is None
    assert input_model(no_input) is None


def test_coerce_as_the_sdk_does() -> None:
    model = InputModel(Order)
    order = model.coerce({"order_id": "o-1", "amount": "12.5"})
    assert order == Order(order_id="o-1", amount=12.5)
    assert model.coerce(order) is order
    assert model.coerce(None) is None
    parcel = InputModel(Parcel).coerce(SimpleNamespace(weight=2, label="fragile"))
    assert parcel == Parcel(2.0, "fragile")
    with pytest.raises(ValidationError):
        InputModel(Parcel).coerce({"weight": "heavy"})


def test_check_says_why_an_input_does_not_fit() -> None:
    model = InputModel(Order)
    assert model.check({"order_id": "o-1", "amount": 3}) is None
    why = model.check({"order_id": "o-1", "amount": "lots"})
    assert why is not None and "amount: Input should be a valid number" in why
    assert model.check(None) == "an input is required (Order)"
    assert InputModel(Order, optional=True).check(None) is None


def _report(task: Any) -> Outbound:
    assert isinstance(task, Task) and task.name == REPORT_ACTIVITY
    return Outbound.from_record(task.payload)


def test_the_wrapper_hands_the_workflow_its_model_and_reports_its_output_as_json() -> None:
    ctx = FakeContext()
    wrapped = reporting(order_flow, "order_flow")
    gen = wrapped(cast(Any, ctx), Origin("ops", "m-1").wrap({"order_id": "o-1", "amount": 5}))
    step = next(gen)
    assert isinstance(step, Task)
    assert step.payload == Order(order_id="o-1", amount=5.0)  # a model, not a dict
    completed = _report(gen.send(None)).event
    assert completed.event.value == "completed"
    assert completed.output == {"order_id": "o-1", "amount": 5.0}


def test_the_wrapper_builds_a_dataclass_input() -> None:
    wrapped = reporting(parcel_flow, "parcel_flow")
    gen = wrapped(cast(Any, FakeContext()), {"weight": 1.5})
    assert _report(next(gen)).event.output == 3.0


def test_an_input_that_does_not_fit_is_a_failed_event_with_the_validation_error() -> None:
    """What reaches the workflow without the start check (a start by another client)."""
    seen: list[Any] = []

    def flow(ctx: Any, order: Order) -> None:
        seen.append(order)

    gen = reporting(flow, "flow")(cast(Any, FakeContext()), {"order_id": "o-1"})
    failed = _report(next(gen)).event
    assert failed.event.value == "failed"
    assert failed.failure is not None and failed.failure.type == "ValidationError"
    assert "amount" in failed.failure.message
    with pytest.raises(ValidationError):
        gen.send(None)
    assert seen == []


def test_the_registry_notes_typed_inputs_and_wraps_dataclass_activities() -> None:
    runtime = FakeRuntime()
    registry = WorkflowRegistry(cast(Any, runtime))
    registry.workflow(order_flow)
    registry.workflow(parcel_flow, name="parcels")

    def untyped_flow(ctx: Any, data: Any) -> None: ...

    registry.workflow(untyped_flow)
    assert registry.inputs == {"order_flow": InputModel(Order), "parcels": InputModel(Parcel)}

    def price(ctx: Any, order: Order) -> Any:
        return order

    def weigh(ctx: Any, parcel: Parcel) -> float:
        return parcel.weight

    registry.activity(price)
    registry.activity(weigh, name="weigh_parcel")
    [(price_fn, _), (weigh_fn, weigh_name)] = runtime.activities
    assert price_fn.__wrapped__ is price  # a new function each time; the SDK coerces models
    assert price_fn(None, {"order_id": "o", "amount": 1}) == {"order_id": "o", "amount": 1}
    assert registry.activity_names == ["price", "weigh_parcel"]
    with pytest.raises(ValueError, match="registered twice"):
        registry.activity(price)
    assert weigh_name == "weigh_parcel"
    assert weigh_fn(None, {"weight": 4}) == 4.0
    assert weigh.__dict__["_dapr_alternate_name"] == "weigh_parcel"


def test_the_sdk_hands_activities_their_model_through_the_registry() -> None:
    """The SDK's own activity wrapper (registered for real, not run through a sidecar)."""
    runtime = WorkflowRuntime()
    registry = WorkflowRegistry(runtime)
    got: list[Any] = []

    def price(ctx: Any, order: Order) -> None:
        got.append(order)

    def weigh(ctx: Any, parcel: Parcel) -> None:
        got.append(parcel)

    registry.activity(price)
    registry.activity(weigh)
    sdk = runtime._WorkflowRuntime__worker._registry  # type: ignore[attr-defined]
    sdk.get_activity("price")(SimpleNamespace(), {"order_id": "o", "amount": 1})
    sdk.get_activity("weigh")(SimpleNamespace(), {"weight": 1})
    assert got == [Order(order_id="o", amount=1), Parcel(1.0)]


NEW = Claim(Begin.NEW, "key")


def _handler(gateway: FakeGateway) -> StartHandler:
    inputs = {"order_flow": InputModel(Order), "maybe_flow": InputModel(Order, optional=True)}
    return StartHandler(cast(WorkflowGateway, gateway), ["order_flow", "maybe_flow"], inputs)


def test_a_start_whose_input_does_not_fit_is_rejected_before_anything_runs() -> None:
    gateway = FakeGateway()
    message = inbound(
        {"workflow": "order_flow", "instance_id": "o-1", "input": {"order_id": "o-1"}},
        topic="workflow.start",
    )
    with pytest.raises(Rejected) as info:
        _handler(gateway).handle(message, NEW)
    assert info.value.code is RejectCode.INVALID_MESSAGE
    assert (info.value.instance_id, info.value.workflow) == ("o-1", "order_flow")
    assert "order_flow's Order" in info.value.reason
    assert "amount: Field required" in info.value.reason
    assert gateway.calls == []  # nothing read, nothing started


def test_a_start_without_the_required_input_is_rejected_and_an_optional_one_starts() -> None:
    gateway = FakeGateway()
    with pytest.raises(Rejected, match=r"an input is required \(Order\)"):
        _handler(gateway).handle(inbound({"workflow": "order_flow"}, topic="workflow.start"), NEW)
    assert gateway.calls == []
    _handler(gateway).handle(inbound({"workflow": "maybe_flow"}, topic="workflow.start"), NEW)
    assert [c[0] for c in gateway.calls] == ["get_state", "start"]


def test_a_start_whose_input_fits_starts_with_the_input_as_sent() -> None:
    gateway = FakeGateway()
    body = {"order_id": "o-1", "amount": "7"}
    message = inbound({"workflow": "order_flow", "input": body}, topic="workflow.start")
    _handler(gateway).handle(message, NEW)
    [start] = [c for c in gateway.calls if c[0] == "start"]
    assert start[3]["input"] == body  # the workflow's wrapper coerces it when it runs
