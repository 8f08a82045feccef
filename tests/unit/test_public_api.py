"""dapr_workflow_worker: Flows (decorators), module loading, and the test harness."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel

import dapr_workflow_worker
from dapr_workflow_worker import Flows, WorkflowRegistry
from dapr_workflow_worker.testing import WorkerHarness
from tests.unit.test_hosting import FakeRuntime
from worker.hosting import load_module


class Order(BaseModel):
    order_id: str
    amount: float


@dataclass
class Parcel:
    weight: float


flows = Flows()


@flows.activity
def price(ctx: Any, order: Order) -> float:
    assert isinstance(order, Order)
    return order.amount * 2


@flows.activity(name="weigh")
def weigh_parcel(ctx: Any, parcel: Parcel) -> float:
    assert isinstance(parcel, Parcel)
    return parcel.weight


@flows.workflow(name="order")
def order_flow(ctx: Any, order: Order) -> Generator[Any, Any, Any]:
    assert isinstance(order, Order)
    total = yield ctx.call_activity(price, input=order)
    yield ctx.create_timer(timedelta(minutes=5))
    decision = yield ctx.wait_for_external_event("go")
    return {"total": total, "decision": decision}


@flows.workflow
def parcel_flow(ctx: Any, parcel: Parcel) -> Generator[Any, Any, Any]:
    weight = yield ctx.call_activity(weigh_parcel, input=parcel)
    return weight


@flows.workflow
def broken_flow(ctx: Any) -> None:
    raise RuntimeError("broken on purpose")


def test_the_package_exports_the_public_names() -> None:
    assert set(dapr_workflow_worker.__all__) == {"Flows", "WorkflowRegistry", "__version__"}
    assert dapr_workflow_worker.__version__


def test_decorators_return_the_function_and_register_declares_all() -> None:
    assert order_flow.__name__ == "order_flow"  # unchanged, callable as before
    assert flows.workflow_names == ["order", "parcel_flow", "broken_flow"]
    runtime = FakeRuntime()
    registry = WorkflowRegistry(cast(Any, runtime))
    flows.register(registry)
    assert registry.workflow_names == ["order", "parcel_flow", "broken_flow"]
    assert registry.activity_names == ["price", "weigh"]
    assert set(registry.inputs) == {"order", "parcel_flow"}
    with pytest.raises(ValueError, match="declared twice"):
        flows.workflow(name="order")(broken_flow)


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def test_a_module_is_loaded_by_its_flows_or_its_register(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = Flows()
    declared.workflow(name="a")(broken_flow)
    called: list[Any] = []
    monkeypatch.setitem(sys.modules, "flows_mod", _module("flows_mod", flows=declared))
    monkeypatch.setitem(
        sys.modules, "register_mod", _module("register_mod", register=called.append)
    )
    monkeypatch.setitem(sys.modules, "empty_mod", _module("empty_mod"))
    registry = WorkflowRegistry(cast(Any, FakeRuntime()))
    load_module(registry, "flows_mod")
    load_module(registry, "register_mod")
    assert registry.workflow_names == ["a"]
    assert called == [registry]
    with pytest.raises(ValueError, match="no register"):
        load_module(registry, "empty_mod")


def test_a_module_named_worker_that_shadows_the_internals_is_named(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text("")
    root = Path(dapr_workflow_worker.__file__).parent.parent
    run = subprocess.run(
        [sys.executable, "-c", "import dapr_workflow_worker"],
        env={"PYTHONPATH": str(root)},
        cwd=tmp_path,  # first on sys.path, as the directory of a script of yours is
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert f"shadowed by '{tmp_path / 'worker.py'}'" in run.stderr


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_the_harness_runs_a_typed_workflow_with_its_timer_and_event() -> None:
    worker = WorkerHarness(flows)
    body = {"workflow": "order", "input": {"order_id": "o-1", "amount": 2}}
    started = worker.publish("start", body, message_id="m-1", source="shop")
    instance_id = worker.instance_id("order", "m-1", source="shop")
    assert _kinds(started) == ["started"]
    assert started[0]["instance_id"] == instance_id
    assert started[0]["correlation_id"] == "m-1"
    # The event comes before the timer fired: the workflow takes it once it waits for it.
    raised = worker.publish("approval", {"instance_id": instance_id, "event_name": "go"})
    assert _kinds(raised) == ["event_raised"]
    assert worker.advance(timedelta(minutes=4)) == []  # the timer is not due yet
    [completed] = worker.advance(timedelta(minutes=1))
    assert completed["event"] == "completed"
    assert completed["output"] == {"total": 4.0, "decision": None}
    state = worker.state(instance_id)
    assert state is not None and state.status == "COMPLETED"


def test_the_harness_builds_dataclass_inputs_through_workflow_and_activity() -> None:
    worker = WorkerHarness(flows)
    events = worker.publish("start", {"workflow": "parcel_flow", "input": {"weight": "1.5"}})
    assert _kinds(events) == ["started", "completed"]
    assert events[1]["output"] == 1.5


def test_the_harness_rejects_as_the_worker_does() -> None:
    worker = WorkerHarness(flows)
    [misfit] = worker.publish("start", {"workflow": "order", "input": {"order_id": "o"}})
    assert (misfit["code"], misfit["workflow"]) == ("invalid_message", "order")
    assert "amount: Field required" in misfit["reason"]
    [unknown] = worker.publish("start", {"workflow": "approval_workflow"})
    assert unknown["code"] == "unknown_workflow"  # the samples only with builtins=True
    [no_instance] = worker.publish("control", {"action": "suspend", "instance_id": "nope"})
    assert no_instance["code"] == "unknown_instance"


def test_the_harness_reports_a_failure_and_control_actions() -> None:
    worker = WorkerHarness(flows, builtins=True)
    failed = worker.publish("start", {"workflow": "broken_flow", "instance_id": "b-1"})
    assert _kinds(failed) == ["started", "failed"]
    assert failed[1]["failure"]["message"] == "broken on purpose"
    worker.publish(
        "start",
        {"workflow": "order", "instance_id": "o-2", "input": {"order_id": "o-2", "amount": 1}},
    )
    assert _kinds(worker.publish("control", {"action": "suspend", "instance_id": "o-2"})) == [
        "suspended"
    ]
    assert _kinds(worker.publish("control", {"action": "resume", "instance_id": "o-2"})) == [
        "resumed"
    ]
    ended = worker.publish("control", {"action": "terminate", "instance_id": "o-2"})
    assert _kinds(ended) == ["terminated"]
    [state] = worker.publish("control", {"action": "query", "instance_id": "o-2"})
    assert (state["event"], state["status"]) == ("state", "TERMINATED")
    assert state["input"] == {"order_id": "o-2", "amount": 1}
    body = {"workflow": "task_processing_workflow", "input": {"tasks": ["a", "b"]}}
    sample = worker.publish("start", body)  # a sample of the worker's, fan-out and all
    assert _kinds(sample) == ["started", "completed"]
    assert sample[-1]["output"]["processed"] == 2
