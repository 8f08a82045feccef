"""A decorated workflow with a pydantic-typed input, loaded from a plugin module, against the
real stack: it completes from a message with its typed input; a misfit is rejected."""

from __future__ import annotations

from scripts.devstack import Stack
from tests.integration.conftest import Observer, private_worker, unique


def test_a_typed_decorated_workflow_runs_and_a_misfit_is_rejected(
    stack: Stack, observer: Observer
) -> None:
    env = {"WORKER_WORKFLOW_MODULES": '["tests.integration.typed_flows"]'}
    with private_worker(stack, "typed", env=env) as running:
        status = running.topic("workflow.status")
        instance_id = unique("ship")
        body = {"shipment_id": instance_id, "parcels": 2}
        observer.publish(
            running.topic("workflow.start"),
            {"workflow": "typed_shipment", "instance_id": instance_id, "input": body},
        )
        [completed] = observer.wait_for(
            "completed",
            lambda: [
                e
                for e in observer.for_instance(instance_id, status)
                if e.data["event"] == "completed"
            ],
        )
        assert completed.data["output"] == {
            "kind": "Shipment",  # the workflow got the model, not a dict
            "label": {"shipment_id": instance_id, "text": "2 parcel(s)"},
        }

        misfit_id = unique("ship")
        message_id = observer.publish(
            running.topic("workflow.start"),
            {"workflow": "typed_shipment", "instance_id": misfit_id, "input": {"parcels": 0}},
        )
        [rejected] = observer.wait_for("rejected", lambda: observer.for_message(message_id, status))
        assert (rejected.data["event"], rejected.data["code"]) == ("rejected", "invalid_message")
        assert "shipment_id: Field required" in rejected.data["reason"]
        assert "parcels: Input should be greater than or equal to 1" in rejected.data["reason"]
        assert running.client.get_workflow_state(misfit_id) is None  # nothing was started
