"""Small hand-written fakes of the sidecar clients the worker talks to (no Dapr, no network)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import grpc
from dapr.clients.grpc._state import Concurrency, StateOptions

from worker.gateway import InstanceState
from worker.handlers.inbound import Inbound
from worker.origin import unwrap
from worker.outcomes import Missing, Rejected, Transient


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """What a failed gRPC call raises: an RpcError that also has code() and details()."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# --- state store -------------------------------------------------------------------------


@dataclass(frozen=True)
class StateItem:
    """What `DaprClient.get_state` returns: ``data`` is b"" when the key is missing."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class BulkItem:
    key: str
    data: bytes


@dataclass(frozen=True)
class BulkResponse:
    items: list[BulkItem]


@dataclass
class SaveCall:
    key: str
    value: bytes
    etag: str | None
    options: StateOptions | None
    state_metadata: dict[str, str] | None


@dataclass
class FakeStateClient:
    """A state store with Dapr's etag and first-write semantics."""

    items: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    saves: list[SaveCall] = field(default_factory=list)
    fail_get: grpc.RpcError | None = None
    fail_save: grpc.RpcError | None = None
    stores: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bulk_saves: int = 0

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
        self.stores.add(store_name)
        raw = value.encode() if isinstance(value, str) else value
        self.saves.append(SaveCall(key, raw, etag, options, state_metadata))
        if self.fail_save is not None:
            raise self.fail_save
        with self.lock:  # a store checks and writes atomically
            current = self.items.get(key)
            first_write = options is not None and options.concurrency == Concurrency.first_write
            if etag is not None:
                if current is None or str(current[1]) != etag:
                    raise FakeRpcError(grpc.StatusCode.ABORTED, f"possible etag mismatch for {key}")
            elif first_write and current is not None:
                raise FakeRpcError(grpc.StatusCode.ABORTED, f"possible etag mismatch for {key}")
            version = current[1] + 1 if current is not None else 1
            self.items[key] = (raw, version)

    def save_bulk_state(self, store_name: str, states: list[Any]) -> None:
        """One call for several items (each a `dapr.clients.grpc._state.StateItem`): all
        saved, or none when ``fail_save`` is set."""
        if self.fail_save is not None:
            raise self.fail_save
        self.bulk_saves += 1
        for item in states:
            self.save_state(
                store_name, item.key, item.value, item.etag, item.options, item.metadata
            )

    def get_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> StateItem:
        self.stores.add(store_name)
        if self.fail_get is not None:
            raise self.fail_get
        current = self.items.get(key)
        if current is None:
            return StateItem(b"", "")
        return StateItem(current[0], str(current[1]))

    def delete_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> None:
        self.stores.add(store_name)
        self.items.pop(key, None)

    def get_bulk_state(
        self, store_name: str, keys: Sequence[str], *args: Any, **kwargs: Any
    ) -> Any:
        """What `DaprClient.get_bulk_state` returns: one item per key, b"" when missing."""
        items = [BulkItem(key, self.get_state(store_name, key).data) for key in keys]
        return BulkResponse(items)

    def keys_with(self, part: str) -> list[str]:
        return [k for k in self.items if part in k]


@dataclass
class HookedStateClient(FakeStateClient):
    """A `FakeStateClient` that runs a test's hook once, just before the next read or write of
    a key: the way to let another replica's read-modify-write happen in between,
    deterministically. Records every key read."""

    before_get: dict[str, Callable[[], object]] = field(default_factory=dict)
    before_save: dict[str, Callable[[], object]] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)

    def get_state(self, store_name: str, key: str, *args: Any, **kwargs: Any) -> StateItem:
        hook = self.before_get.pop(key, None)
        if hook is not None:
            hook()
        self.gets.append(key)
        return super().get_state(store_name, key, *args, **kwargs)

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
        hook = self.before_save.pop(key, None)
        if hook is not None:
            hook()
        super().save_state(store_name, key, value, etag, options, state_metadata, metadata)


@dataclass
class FakeClock:
    """Stands in for the ``time`` module of a module under test (``monkeypatch.setattr(module,
    "time", clock)``): it shows the time the test set, and ``sleep`` moves it on at once."""

    now: float = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- pub/sub -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedEntry:
    entry_id: str
    error: str


@dataclass(frozen=True)
class BulkPublished:
    """What `DaprClient.publish_events` returns."""

    failed_entries: list[FailedEntry]


@dataclass
class FakePublishClient:
    """Records every `publish_event` call's keyword arguments."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    error: grpc.RpcError | None = None
    bulk_calls: int = 0
    fail_in_bulk: set[int] = field(default_factory=set)

    def publish_event(
        self,
        pubsub_name: str,
        topic_name: str,
        data: bytes | str,
        publish_metadata: dict[str, str] | None = None,
        metadata: Any = None,
        data_content_type: str | None = None,
    ) -> None:
        if self.error is not None:
            raise self.error
        assert data_content_type == "application/cloudevents+json", data_content_type
        self.calls.append(
            {
                "pubsub_name": pubsub_name,
                "topic_name": topic_name,
                "data": data,
                "cloudevent": json.loads(data),  # structured: attributes and data
                "publish_metadata": dict(publish_metadata or {}),
                "data_content_type": data_content_type,
            }
        )

    def publish_events(
        self,
        pubsub_name: str,
        topic_name: str,
        data: Sequence[bytes | str],
        publish_metadata: dict[str, str] | None = None,
        data_content_type: str | None = None,
    ) -> Any:
        """A bulk publish: each event recorded as a call; ``failed_entries`` names the ones
        ``fail_in_bulk`` says (by position) failed."""
        if self.error is not None:
            raise self.error
        self.bulk_calls += 1
        failed = []
        for position, event in enumerate(data):
            if position in self.fail_in_bulk:
                failed.append(FailedEntry(f"entry-{position}", "broker refused it"))
                continue
            self.publish_event(
                pubsub_name, topic_name, event, publish_metadata, None, data_content_type
            )
        return BulkPublished(failed)

    def bodies(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for call in self.calls:
            loaded = call["cloudevent"]["data"]
            assert isinstance(loaded, dict)
            out.append(loaded)
        return out

    def event_ids(self) -> list[str]:
        return [call["cloudevent"]["id"] for call in self.calls]


# --- workflow gateway ----------------------------------------------------------------------


@dataclass
class FakeGateway:
    """Stands in for `WorkflowGateway`: configured states, recorded calls."""

    states: dict[str, InstanceState] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    purge_rejects: set[str] = field(default_factory=set)
    histories: dict[str, list[Any]] = field(default_factory=dict)  # HistoryEvents per instance

    def get_state(self, instance_id: str, *, payloads: bool = True) -> InstanceState | None:
        self.calls.append(("get_state", instance_id, payloads))
        return self.states.get(instance_id)

    def start(self, workflow: str, instance_id: str, data: Any, start_at: datetime | None) -> None:
        self.calls.append(("start", workflow, instance_id, data, start_at))

    def raise_event(self, instance_id: str, event_name: str, data: Any) -> None:
        self.calls.append(("raise_event", instance_id, event_name, data))

    def suspend(self, instance_id: str, reason: str | None) -> None:
        self.calls.append(("suspend", instance_id, reason))

    def resume(self, instance_id: str, reason: str | None) -> None:
        self.calls.append(("resume", instance_id, reason))

    def terminate(self, instance_id: str, output: Any, recursive: bool) -> None:
        self.calls.append(("terminate", instance_id, output, recursive))

    def purge(self, instance_id: str, recursive: bool) -> None:
        self.calls.append(("purge", instance_id, recursive))
        if instance_id in self.purge_rejects:
            raise Rejected(f"purge {instance_id}: unknown instance")

    def instance_ids(self, page_size: int = 500) -> Iterator[str]:
        yield from list(self.states)

    def history(self, instance_id: str) -> list[Any]:
        self.calls.append(("history", instance_id))
        if instance_id not in self.histories:
            raise Missing(instance_id)
        return self.histories[instance_id]

    def mutations(self) -> list[tuple[Any, ...]]:
        """Every call other than reads."""
        return [c for c in self.calls if c[0] not in ("get_state", "history")]


@dataclass
class StartMadeAnswerLost(FakeGateway):
    """Makes the start (the instance exists, RUNNING, with the origin its input carries), then
    raises ``answer(workflow, instance_id)``: the start was made, its answer lost (a deadline
    passed, or the sidecar's own retry in a fail-over answered ALREADY_EXISTS)."""

    answer: Callable[[str, str], Exception] = field(
        default=lambda workflow, instance_id: Transient(f"start {instance_id}: deadline exceeded")
    )

    def start(self, workflow: str, instance_id: str, data: Any, start_at: datetime | None) -> None:
        super().start(workflow, instance_id, data, start_at)
        origin, _ = unwrap(data)
        self.states[instance_id] = replace(state(instance_id, "RUNNING"), origin=origin)
        raise self.answer(workflow, instance_id)


def state(
    instance_id: str,
    status: str,
    *,
    workflow: str = "approval_workflow",
    created_at: datetime | None = None,
) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        workflow=workflow,
        status=status,
        created_at=created_at,
        last_updated_at=created_at,
    )


def inbound(
    data: bytes | str | dict[str, Any],
    *,
    topic: str = "workflow.control",
    message_id: str = "msg-1",
    source: str = "publisher",
    content_type: str = "application/json",
) -> Inbound:
    if isinstance(data, dict):
        raw = json.dumps(data).encode()
    elif isinstance(data, str):
        raw = data.encode()
    else:
        raw = data
    return Inbound(
        topic=topic, message_id=message_id, source=source, content_type=content_type, data=raw
    )
