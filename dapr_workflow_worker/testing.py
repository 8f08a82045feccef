"""Test your workflows with the worker's behaviour, without a sidecar.

::

    from dapr_workflow_worker.testing import WorkerHarness

    def test_invoice() -> None:
        worker = WorkerHarness("my_flows")
        events = worker.publish("start", {"workflow": "invoice_workflow", "input": {...}})
        assert [e["event"] for e in events] == ["started", "completed"]

A message goes through the worker's own line (CloudEvent -> message model -> handler ->
status events): the same checks (allowed workflows, the input against the workflow's model),
the same instance ids and event ids, the same `rejected` codes. The workflows run in this
process on the SDK's executor (`worker.inprocess`): activities for real, timers when
`advance` moves the virtual clock, external events from `workflow.approval` messages. State
and pub/sub are in memory. For what needs the real engine (child workflows, histories,
durability across restarts), run the worker against a sidecar (`scripts/devstack.py`).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, cast

import grpc
from cloudevents.sdk.event import v1
from dapr.clients.grpc._state import Concurrency, StateOptions

from worker.config import Settings
from worker.flows import Flows
from worker.gateway import InstanceState, WorkflowGateway
from worker.handlers.approval import ApprovalHandler
from worker.handlers.control import ControlHandler
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline, TopicHandler
from worker.handlers.start import StartHandler, derived_instance_id
from worker.hosting import build_runtime, load_module
from worker.idempotency import IdempotencyStore
from worker.inprocess import InProcessEngine
from worker.publisher import StatusPublisher
from worker.purges import Purges

__all__ = ["WorkerHarness"]


@dataclass(frozen=True)
class _Item:
    data: bytes
    etag: str


@dataclass
class _MemoryState:
    """A state store with Dapr's etag and first-write semantics."""

    items: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def save_state(
        self,
        store_name: str,
        key: str,
        value: bytes | str,
        etag: str | None = None,
        options: StateOptions | None = None,
        state_metadata: dict[str, str] | None = None,
        metadata: Any = None,
    ) -> None:
        raw = value.encode() if isinstance(value, str) else value
        with self.lock:
            current = self.items.get(key)
            first_write = options is not None and options.concurrency == Concurrency.first_write
            if (etag is not None and (current is None or str(current[1]) != etag)) or (
                etag is None and first_write and current is not None
            ):
                raise _Aborted(f"possible etag mismatch for {key}")
            self.items[key] = (raw, current[1] + 1 if current else 1)

    def save_bulk_state(self, store_name: str, states: list[Any]) -> None:
        for item in states:
            self.save_state(store_name, item.key, item.value, item.etag, item.options)

    def get_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> _Item:
        current = self.items.get(key)
        return _Item(b"", "") if current is None else _Item(current[0], str(current[1]))

    def delete_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> None:
        self.items.pop(key, None)


class _Aborted(grpc.RpcError):  # type: ignore[misc]
    """What the sidecar answers for an etag mismatch (gRPC ABORTED)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.ABORTED

    def details(self) -> str:
        return str(self)


@dataclass
class _MemoryPubSub:
    """Keeps every status CloudEvent the worker publishes."""

    published: list[dict[str, Any]] = field(default_factory=list)

    def publish_event(
        self,
        pubsub_name: str,
        topic_name: str,
        data: bytes | str,
        publish_metadata: dict[str, str] | None = None,
        metadata: Any = None,
        data_content_type: str | None = None,
    ) -> None:
        self.published.append(json.loads(data))


_TOPICS = ("start", "approval", "control")


class WorkerHarness:
    """The worker's line with your workflows, in memory.

    ``workflows``: module names (as in ``WORKER_WORKFLOW_MODULES``), modules, or `Flows`.
    ``builtins``: also allow the worker's sample workflows. ``settings``: the worker's
    settings (topic names, app-id; default: the defaults).
    """

    def __init__(
        self,
        *workflows: str | ModuleType | Flows,
        builtins: bool = False,
        settings: Settings | None = None,
        now: datetime | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        state, self._pubsub = _MemoryState(), _MemoryPubSub()
        publisher = StatusPublisher(cast(Any, self._pubsub), s)
        runtime, registry = build_runtime(publisher, [])
        samples = set(registry.workflow_names)
        for item in workflows:
            if isinstance(item, Flows):
                item.register(registry)
            else:
                load_module(registry, item if isinstance(item, str) else item.__name__)
        allowed = [n for n in registry.workflow_names if builtins or n not in samples]
        if s.allowed_workflows is not None:
            allowed = list(s.allowed_workflows)
        self.engine = InProcessEngine(runtime, now)
        gateway = cast(WorkflowGateway, self.engine)
        store = IdempotencyStore(
            state, s.state_store, s.idempotency_ttl_seconds, s.claim_lease_seconds
        )
        purges = Purges(state, s.state_store, s.idempotency_ttl_seconds)
        self._pipeline = Pipeline(
            store, publisher, s.max_transient_attempts, s.max_message_bytes, purges=purges
        )
        self._handlers: dict[str, TopicHandler] = {
            s.start_topic: StartHandler(gateway, allowed, registry.inputs),
            s.approval_topic: ApprovalHandler(gateway),
            s.control_topic: ControlHandler(gateway, None, purges),
        }
        self.workflows = allowed

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every status event published so far (the CloudEvents' ``data``), in order."""
        return [cloudevent["data"] for cloudevent in self._pubsub.published]

    @property
    def cloudevents(self) -> list[dict[str, Any]]:
        """Every status CloudEvent published so far, whole (``id``, ``type``, ``data``...)."""
        return list(self._pubsub.published)

    def publish(
        self,
        topic: str,
        body: dict[str, Any],
        *,
        message_id: str | None = None,
        source: str = "tests",
    ) -> list[dict[str, Any]]:
        """Deliver ``body`` on ``topic`` (``start``, ``approval``, ``control`` or the full
        topic name) as the sidecar does, run what it set going, and return the status events
        published meanwhile: the message's answer (`started`, `rejected`, ...) and what the
        workflows reported (`completed`, `failed`). A redelivery (same ``message_id`` and
        ``source``) is answered as the worker answers one."""
        name = self._topic(topic)
        before = len(self._pubsub.published)
        event = v1.Event()  # type: ignore[no-untyped-call]
        event.SetEventID(message_id or str(uuid.uuid4()))
        event.SetSource(source)
        event.SetContentType("application/json")
        event.SetData(json.dumps(body).encode())
        self._pipeline(name, self._handlers[name], event)
        self.engine.run()
        return self.events[before:]

    def advance(self, by: timedelta) -> list[dict[str, Any]]:
        """Move the workflows' clock on by ``by``: due timers fire. Returns the status events
        published meanwhile."""
        before = len(self._pubsub.published)
        self.engine.advance(by)
        self.engine.run()
        return self.events[before:]

    def state(self, instance_id: str) -> InstanceState | None:
        """The instance as the sidecar would show it (None: no such instance)."""
        return self.engine.get_state(instance_id)

    def instance_id(self, workflow: str, message_id: str, source: str = "tests") -> str:
        """The id the worker gives an instance started without one by this message."""
        message = Inbound(
            topic=self.settings.start_topic,
            message_id=message_id,
            source=source,
            content_type="application/json",
            data=b"",
        )
        return derived_instance_id(workflow, message)

    def _topic(self, topic: str) -> str:
        if topic in _TOPICS:
            return cast(str, getattr(self.settings, f"{topic}_topic"))
        if topic not in self._handlers:
            raise ValueError(f"no such topic {topic!r}: one of {', '.join(self._handlers)}")
        return topic
