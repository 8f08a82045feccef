"""Accept ahead: a delivery is journaled and answered at once, then run through the pipeline
on the lane of its instance; what was accepted and not finished runs after a restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from cloudevents.sdk.event import v1

from tests.unit.fakes import FakePublishClient, FakeRpcError, FakeStateClient
from tests.unit.test_pipeline import cloud_event
from worker import intake as intake_module
from worker import outcomes
from worker.actions import control_adapter
from worker.config import Settings
from worker.events import EventType
from worker.handlers.inbound import Inbound, parse
from worker.handlers.pipeline import Pipeline
from worker.handlers.report import report
from worker.idempotency import Claim, IdempotencyStore, message_key
from worker.intake import Intake
from worker.outcomes import RejectCode, Rejected, Transient
from worker.publisher import Outbound, StatusPublisher

TOPIC = "workflow.control"
JOURNAL = "wfw|intake|worker"


def within(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def event(message_id: str, instance_id: str) -> v1.Event:
    body = json.dumps({"action": "query", "instance_id": instance_id})
    return cloud_event(message_id, body.encode())


@dataclass
class Handler:
    """Records the order it handles messages in; a message id in ``hold`` waits for its
    event; ``errors`` are raised, one a call, first; with ``parse``, a message that is not a
    control message is rejected first, as the control handler does."""

    handled: list[str] = field(default_factory=list)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    parse: bool = False

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        if self.parse:
            parse(message, control_adapter)
        gate = self.hold.get(message.message_id)
        if gate is not None:
            gate.wait(5)
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.handled.append(message.message_id)
        return [report(message, EventType.SUSPENDED, "order-1", status="SUSPENDED")]


@dataclass
class DeadLetters:
    """Moves messages; fails the first ``failures`` moves (the broker is down)."""

    moved: list[str] = field(default_factory=list)
    failures: int = 0

    def dead_letter(self, message: Inbound) -> None:
        if self.failures:
            self.failures -= 1
            raise Transient("dead-letter topic unreachable")
        self.moved.append(message.message_id)


@dataclass
class Rig:
    state: FakeStateClient
    pubsub: FakePublishClient
    handler: Handler
    dead: DeadLetters
    ready: threading.Event
    stopping: threading.Event
    intakes: list[Intake] = field(default_factory=list)

    def intake(self, *, slots: int = 8, lanes: int = 4, max_bytes: int = 1_000_000) -> Intake:
        """A started intake over this rig's store (a new one is the worker after a restart)."""
        store = IdempotencyStore(self.state, "records", ttl_seconds=3600, lease_seconds=60)
        publisher = StatusPublisher(self.pubsub, Settings(app_id="worker"))
        pipeline = Pipeline(store, publisher, max_transient_attempts=3, max_message_bytes=max_bytes)
        made = Intake(
            pipeline,
            {TOPIC: self.handler},
            self.state,
            "records",
            JOURNAL,
            self.dead,
            store.handled,
            ttl_seconds=3600,
            lanes=lanes,
            slots=slots,
            ready=self.ready,
            stopping=self.stopping,
        )
        made.start()
        self.intakes.append(made)
        return made

    def journaled(self) -> list[str]:
        """The messages in the journal that are not handled yet."""
        store = IdempotencyStore(self.state, "records", ttl_seconds=3600, lease_seconds=60)
        waiting = []
        for key in self.state.keys_with(JOURNAL):
            message = Inbound.from_record(json.loads(self.state.items[key][0]))
            if not store.handled(message_key(message.topic, message.source, message.message_id)):
                waiting.append(message.message_id)
        return waiting


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setattr(intake_module, "FIRST_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(outcomes, "FIRST_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(intake_module, "_SLOT_WAIT_SECONDS", 0.2)
    ready = threading.Event()
    ready.set()
    made = Rig(
        FakeStateClient(), FakePublishClient(), Handler(), DeadLetters(), ready, threading.Event()
    )
    yield made
    made.stopping.set()
    for intake in made.intakes:
        intake.stop(2)


def test_a_delivery_is_answered_once_journaled_and_handled_after(rig: Rig) -> None:
    rig.ready.clear()  # the workflow runtime is not connected yet
    intake = rig.intake()
    response = intake.accept(TOPIC, event("m1", "order-1"))
    assert response.status.name == "success"
    assert len(rig.journaled()) == 1 and rig.handler.handled == []
    rig.ready.set()
    within(lambda: rig.handler.handled == ["m1"] and not rig.journaled())
    assert [b["event"] for b in rig.pubsub.bodies()] == ["suspended"]


def test_messages_for_one_instance_run_in_order_and_others_pass_them(rig: Rig) -> None:
    intake = rig.intake(lanes=4)
    first = threading.Event()
    rig.handler.hold["a1"] = first
    for message_id, instance in (("a1", "order-a"), ("a2", "order-a"), ("b1", "order-b")):
        assert intake.accept(TOPIC, event(message_id, instance)).status.name == "success"
    lane_a = intake._lane_of(Inbound(TOPIC, "x", "tests", "", b'{"instance_id": "order-a"}'))
    lane_b = intake._lane_of(Inbound(TOPIC, "x", "tests", "", b'{"instance_id": "order-b"}'))
    if lane_a is not lane_b:  # order-b does not wait behind order-a's slow message
        within(lambda: rig.handler.handled == ["b1"])
    first.set()
    within(lambda: len(rig.handler.handled) == 3)
    handled = rig.handler.handled
    assert handled.index("a1") < handled.index("a2")


def test_a_transient_fault_is_retried_by_the_intake(rig: Rig) -> None:
    rig.handler.errors.append(Transient("sidecar busy"))
    intake = rig.intake()
    assert intake.accept(TOPIC, event("m1", "order-1")).status.name == "success"
    within(lambda: rig.handler.handled == ["m1"] and not rig.journaled())
    assert len(rig.pubsub.bodies()) == 1


def test_a_dropped_message_goes_to_the_dead_letters(rig: Rig) -> None:
    rig.handler.errors.append(Rejected("no such action", code=RejectCode.INVALID_MESSAGE))
    intake = rig.intake()
    intake.accept(TOPIC, event("m1", "order-1"))
    within(lambda: rig.dead.moved == ["m1"] and not rig.journaled())
    assert [(b["event"], b["code"]) for b in rig.pubsub.bodies()] == [
        ("rejected", "invalid_message")
    ]


@pytest.mark.parametrize(
    ("data", "max_bytes", "code"),
    [
        (b"{not json", 1_000_000, "invalid_message"),
        (json.dumps({"action": "query", "instance_id": "o", "pad": "x" * 200}), 100, "too_large"),
    ],
)
def test_a_message_rejected_behind_the_intake_says_why_in_its_code(
    rig: Rig, data: bytes | str, max_bytes: int, code: str
) -> None:
    """The intake answers success at once; the rejection comes later, from the lane."""
    rig.handler.parse = True
    intake = rig.intake(max_bytes=max_bytes)
    assert intake.accept(TOPIC, cloud_event("m1", data)).status.name == "success"
    within(lambda: rig.dead.moved == ["m1"] and not rig.journaled())
    [rejected] = rig.pubsub.bodies()
    assert (rejected["event"], rejected["code"]) == ("rejected", code)
    assert rig.handler.handled == []


def test_a_dead_letter_that_fails_is_tried_again_and_the_lane_goes_on(rig: Rig) -> None:
    rig.handler.errors.append(Rejected("no such action", code=RejectCode.INVALID_MESSAGE))
    rig.dead.failures = 2
    intake = rig.intake(lanes=1)
    intake.accept(TOPIC, event("m1", "order-1"))
    intake.accept(TOPIC, event("m2", "order-1"))  # same lane, behind it
    within(lambda: rig.dead.moved == ["m1"] and rig.handler.handled == ["m2"])


def test_what_was_accepted_and_not_run_runs_after_a_restart_once(rig: Rig) -> None:
    rig.ready.clear()
    before = rig.intake()
    before.accept(TOPIC, event("m1", "order-1"))
    before.accept(TOPIC, event("m2", "order-2"))
    rig.stopping.set()  # the process stops before its runtime connected
    before.stop(2)
    assert len(rig.journaled()) == 2 and rig.handler.handled == []

    rig.stopping.clear()
    rig.ready.set()
    rig.intake()  # the next process
    within(lambda: sorted(rig.handler.handled) == ["m1", "m2"] and not rig.journaled())
    rig.intake()  # and one more start finds nothing left to do
    time.sleep(0.1)
    assert sorted(rig.handler.handled) == ["m1", "m2"]


def test_slots_are_written_with_the_records_ttl_and_not_cleared_after(rig: Rig) -> None:
    intake = rig.intake(slots=1)
    intake.accept(TOPIC, event("m1", "order-1"))
    within(lambda: rig.handler.handled == ["m1"] and not rig.journaled())
    journal_saves = [c for c in rig.state.saves if c.key.startswith(JOURNAL)]
    assert [c.state_metadata for c in journal_saves] == [{"ttlInSeconds": "3600"}]
    assert rig.state.keys_with(JOURNAL)  # left for the next delivery to overwrite
    intake.accept(TOPIC, event("m2", "order-2"))  # the one slot is free again
    within(lambda: rig.handler.handled == ["m1", "m2"])


def test_a_journal_write_that_fails_is_answered_retry(rig: Rig) -> None:
    intake = rig.intake(slots=1)
    rig.state.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "store down")
    assert intake.accept(TOPIC, event("m1", "order-1")).status.name == "retry"
    rig.state.fail_save = None
    assert intake.accept(TOPIC, event("m1", "order-1")).status.name == "success"  # slot free
    within(lambda: rig.handler.handled == ["m1"])


def test_a_delivery_waits_for_a_free_slot_then_is_answered_retry(rig: Rig) -> None:
    rig.ready.clear()  # nothing runs: the one slot stays taken
    intake = rig.intake(slots=1)
    assert intake.accept(TOPIC, event("m1", "order-1")).status.name == "success"
    assert intake.accept(TOPIC, event("m2", "order-2")).status.name == "retry"
    rig.ready.set()
    within(lambda: rig.handler.handled == ["m1"] and not rig.journaled())
    assert intake.accept(TOPIC, event("m2", "order-2")).status.name == "success"
    within(lambda: rig.handler.handled == ["m1", "m2"])


def test_a_slot_that_holds_no_message_is_cleared_at_start(rig: Rig) -> None:
    rig.state.save_state("records", f"{JOURNAL}|0", "not json")
    intake = rig.intake(slots=1)
    assert not rig.state.keys_with(JOURNAL)
    assert intake.accept(TOPIC, event("m1", "order-1")).status.name == "success"
    within(lambda: rig.handler.handled == ["m1"])
