"""A console wired to fakes (no Dapr, no network): the real line, handlers and publisher, with
a `FakeGateway` and a fake state store and pub/sub behind them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.unit.fakes import FakeGateway, FakePublishClient, FakeStateClient
from worker.config import ConsoleUser, Settings
from worker.console.actions import Actions, Jobs
from worker.console.auth import Authenticator
from worker.console.model import InstanceIndex
from worker.console.web import Context, build_app
from worker.gateway import InstanceState
from worker.handlers.approval import ApprovalHandler
from worker.handlers.control import ControlHandler
from worker.handlers.pipeline import Pipeline, TopicHandler
from worker.handlers.start import StartHandler
from worker.idempotency import IdempotencyStore
from worker.publisher import StatusPublisher

OPERATOR_TOKEN = "operator-token-0123456789"
VIEWER_TOKEN = "viewer-token-0123456789ab"
WORKFLOWS = ["approval_workflow", "counter_workflow"]


def state(
    instance_id: str,
    status: str = "RUNNING",
    workflow: str = "approval_workflow",
    created: datetime | None = None,
    **fields: Any,
) -> InstanceState:
    at = created or datetime(2026, 11, 1, tzinfo=UTC)
    return InstanceState(instance_id, workflow, status, at, at, **fields)


@dataclass
class Rig:
    client: TestClient
    gateway: FakeGateway
    pubsub: FakePublishClient
    store: FakeStateClient
    index: InstanceIndex
    context: Context
    settings: Settings

    def as_operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    def as_viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {VIEWER_TOKEN}"}

    def published(self) -> list[dict[str, Any]]:
        return self.pubsub.bodies()


def rig(states: list[InstanceState] | None = None, *, timeout: float = 10.0) -> Rig:
    settings = Settings(
        console_users=[
            ConsoleUser(name="ana", role="operator", token=OPERATOR_TOKEN),
            ConsoleUser(name="vic", role="viewer", token=VIEWER_TOKEN),
        ]
    )
    gateway = FakeGateway(states={s.instance_id: s for s in states or []})
    store = FakeStateClient()
    pubsub = FakePublishClient()
    publisher = StatusPublisher(pubsub, settings)
    pipeline = Pipeline(IdempotencyStore(store, "statestore", 3600, 60.0), publisher, 3, 1_000_000)
    handlers: dict[str, TopicHandler] = {
        settings.start_topic: StartHandler(gateway, WORKFLOWS),  # type: ignore[arg-type]
        settings.approval_topic: ApprovalHandler(gateway),  # type: ignore[arg-type]
        settings.control_topic: ControlHandler(gateway),  # type: ignore[arg-type]
    }
    actions = Actions(pipeline, handlers, settings, timeout)
    index = InstanceIndex()
    publisher.listeners.append(index.on_status)
    publisher.listeners.append(actions.on_status)
    for s in states or []:
        index.from_state(s, datetime(2026, 11, 1, tzinfo=UTC))
    index.load.loaded = True
    context = Context(
        settings=settings,
        index=index,
        actions=actions,
        jobs=Jobs(actions),
        auth=Authenticator(list(settings.console_users), b"k" * 32),
        gateway=gateway,  # type: ignore[arg-type]
        workflows=WORKFLOWS,
        stopping=threading.Event(),
    )
    client = TestClient(build_app(context), base_url="http://127.0.0.1:8088")
    return Rig(client, gateway, pubsub, store, index, context, settings)
