"""The worker's topics, declared once: each one's short name (wfctl's, the default topic
``workflow.<name>``, the setting ``WORKER_<NAME>_TOPIC``), the model of its messages and what
it carries. The settings, the service's handlers, the schemas, the console and wfctl take
their topics from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from worker.actions import control_adapter
from worker.events import StatusEvent
from worker.messages import RaiseEvent, StartWorkflow


@dataclass(frozen=True)
class Topic:
    name: str  # start, approval, control, status
    model: type[BaseModel] | TypeAdapter[Any]  # of its messages' data
    summary: str
    inbound: bool = True  # the worker takes messages from it (else: publishes on it)

    @property
    def default(self) -> str:
        """The topic's name unless a setting says otherwise."""
        return f"workflow.{self.name}"

    @property
    def setting(self) -> str:
        """The `worker.config.Settings` field (env WORKER_<NAME>_TOPIC)."""
        return f"{self.name}_topic"

    def address(self, settings: object) -> str:
        """The topic as ``settings`` name it."""
        return str(getattr(settings, self.setting))


START = Topic("start", StartWorkflow, "Start a workflow instance.")
APPROVAL = Topic("approval", RaiseEvent, "Raise an external event (an approval) into an instance.")
CONTROL = Topic(
    "control",
    control_adapter,
    "Suspend, resume, terminate, purge (one or bulk), query an instance or get its history.",
)
STATUS = Topic(
    "status",
    StatusEvent,
    "Published by the worker: every status change and every request outcome.",
    inbound=False,
)
TOPICS: tuple[Topic, ...] = (START, APPROVAL, CONTROL, STATUS)
