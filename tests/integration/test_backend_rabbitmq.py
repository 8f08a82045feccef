"""The postgres-rabbitmq profile on the real stack: what RabbitMQ loses with the Dapr
component's defaults, and that the shipped component (components/postgres-rabbitmq) loses
nothing while the worker is down, even across a broker restart.

This module brings up a stack of its own (placement, scheduler, PostgreSQL, RabbitMQ) and puts
its ``stack``, ``observer`` and ``worker`` in place of the session's Redis ones, so the
autouse contract checks (schema, per-instance order) and the logs on failure apply here too.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from cloudevents.sdk.event import v1
from dapr.ext.grpc import App

from scripts import devstack
from tests.integration.conftest import (
    Observer,
    Worker,
    on_backend,
    restart_observer_sidecar,
    start_worker,
    unique,
)
from tests.integration.test_delivery import _greeting, publish_all, wait_exactly_once

BACKEND = "postgres-rabbitmq"
# Messages published while the reader is down.
LOST_WHILE_DOWN = 10

# pubsub.rabbitmq with nothing but where the broker is: the component's defaults
# (deletedWhenUnused true, deliveryMode 0, no publisher confirms, requeueInFailure false,
# prefetchCount 0).
_DEFAULTS = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.rabbitmq
  version: v1
  metadata:
    - name: connectionString
      value: "amqp://guest:guest@127.0.0.1:{port}"
"""


stack, observer = on_backend(BACKEND)


@pytest.fixture(scope="module")
def worker(stack: devstack.Stack, observer: Observer) -> Iterator[Worker]:
    running = start_worker(stack, "workflow-worker", profile=BACKEND)
    yield running
    running.stop()


def test_the_profile_is_what_the_stack_runs(stack: devstack.Stack, worker: Worker) -> None:
    """The worker's sidecar loaded PostgreSQL v2 and RabbitMQ (not a fallback)."""
    url = f"http://127.0.0.1:{worker.sidecar.http_port}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as response:
        loaded = json.load(response)["components"]
    components = {c["name"]: (c["type"], c["version"]) for c in loaded}
    assert components["statestore"] == ("state.postgresql", "v2")
    assert components["pubsub"] == ("pubsub.rabbitmq", "v1")


def test_the_components_defaults_lose_what_is_published_while_the_reader_is_down(
    stack: devstack.Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With pubsub.rabbitmq's defaults the reader's queue is auto-delete: it goes with its
    sidecar's connection, and what is published until the sidecar is back reaches no queue.
    A marker published after the reader is back arrives; the messages before it do not."""
    resources = tmp_path_factory.mktemp("rabbitmq-defaults")
    devstack.write_resource(resources / "pubsub.yaml", _DEFAULTS.format(port=stack.rabbitmq_port))
    topic = "loss.defaults"
    seen: list[str] = []
    app = App()
    app.register_health_check(lambda: None)

    def on_message(event: v1.Event) -> None:
        seen.append(str(event.EventID()))

    app.subscribe("pubsub", topic)(on_message)

    app_port = devstack.free_port()
    threading.Thread(target=app.run, args=(app_port,), daemon=True).start()
    devstack.wait_until(lambda: devstack.port_open(app_port), 10, "reader app")
    try:
        reader = stack.start_sidecar("loss-reader", resources, app_port=app_port, wait_for_app=True)
        writer = stack.start_sidecar("loss-writer", resources, app_port=devstack.free_port())
        observer = Observer(http_port=writer.http_port)
        first = observer.publish(topic, {"n": "before"})
        devstack.wait_until(lambda: first in seen, 30, "the reader's first message")
        reader.proc.stop()
        while_down = [observer.publish(topic, {"n": n}) for n in range(LOST_WHILE_DOWN)]
        reader = stack.start_sidecar(
            "loss-reader", resources, app_port=app_port, wait_for_app=True, name="daprd-reader-2"
        )
        # The queue is declared again when the sidecar subscribes; then a marker gets through.
        marker = ""

        def marker_arrived() -> bool:
            nonlocal marker
            if marker and marker in seen:
                return True
            marker = observer.publish(topic, {"n": "marker"})
            return False

        devstack.wait_until(marker_arrived, 60, "a marker after the reader is back", interval=1)
        lost = [m for m in while_down if m not in seen]
        print(f"\ncomponent defaults: {len(lost)} of {len(while_down)} lost, reader down")
        assert len(lost) == len(while_down), f"the defaults kept {len(while_down) - len(lost)}"
    finally:
        app.stop()


def test_the_shipped_component_loses_nothing_while_the_worker_is_down(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    """The worker and its sidecar stopped; starts published meanwhile wait in its durable
    queue, as persistent messages, through a RabbitMQ restart too; all are started exactly
    once when the worker is back."""
    warm = unique("warm")
    observer.publish("workflow.start", _greeting(warm))
    wait_exactly_once(observer, "workflow.status", [warm], ("completed",), timeout=60)
    worker.proc.stop()
    worker.sidecar.proc.stop()
    ids = [unique("down") for _ in range(LOST_WHILE_DOWN * 3)]
    publish_all(observer, "workflow.start", [_greeting(i) for i in ids])
    stack.restart("rabbitmq")  # what waits in the queue is on disk
    # The observer's sidecar was connected through the restart: components-contrib 1.18.3 can
    # come back from it with consumers that hold status events unacknowledged and hand none
    # on (seen: 5 held by 6 consumers of its one queue), so it is restarted, as an operator
    # must (docs/how-to/profiles.md, "Choosing a backend"). The worker's sidecar was down: it
    # starts afresh.
    restart_observer_sidecar(stack, observer, "daprd-workflow-client-2")
    restarted = start_worker(stack, "workflow-worker", profile=BACKEND, name="worker-2")
    try:
        wait_exactly_once(observer, "workflow.status", ids, ("started", "completed"), timeout=120)
        print(f"\nshipped component: 0 of {len(ids)} lost while the worker was down")
    finally:
        restarted.stop()
