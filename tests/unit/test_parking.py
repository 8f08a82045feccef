"""A message whose instance does not exist yet is parked, tried again, and in the end
handled once or rejected after its grace period; parked messages live in the state store."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from tests.unit.fakes import FakePublishClient, FakeStateClient
from tests.unit.test_pipeline import cloud_event
from worker import parking
from worker.config import Settings
from worker.events import EventType
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline
from worker.handlers.report import report
from worker.idempotency import Claim, IdempotencyStore, message_key
from worker.outcomes import Missing
from worker.parking import ParkingLot
from worker.publisher import Outbound, StatusPublisher
from worker.purges import Purges

TOPIC = "workflow.approval"
BODY = b'{"instance_id": "order-1", "data": true}'


@dataclass
class WaitingHandler:
    """Raises Missing until ``exists`` is set, then reports `event_raised`."""

    exists: bool = False
    effects: list[str] = field(default_factory=list)

    def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
        if not self.exists:
            raise Missing("order-1")
        self.effects.append(message.message_id)
        return [report(message, EventType.EVENT_RAISED, "order-1", status="RUNNING")]


@dataclass
class Rig:
    pipeline: Pipeline
    lot: ParkingLot
    state: FakeStateClient
    pubsub: FakePublishClient
    purges: Purges

    def retry_parked(self, handler: WaitingHandler) -> list[str]:
        """One pass of the lot, as the service runs it; the responses' statuses."""
        statuses = []
        for key in sorted(self.lot.parked()):
            message = self.lot.load(key)
            assert message is not None
            status = self.pipeline.handle(handler, message).status.name
            statuses.append(status)
            if status != "retry":
                self.lot.unpark(key)
        return statuses


def _rig(grace: float) -> Rig:
    state, pubsub = FakeStateClient(), FakePublishClient()
    store = IdempotencyStore(state, "statestore", ttl_seconds=3600, lease_seconds=60)
    lot = ParkingLot(state, "statestore", ttl_seconds=3600)
    publisher = StatusPublisher(pubsub, Settings(app_id="worker"))
    purges = Purges(state, "statestore", ttl_seconds=3600)
    pipeline = Pipeline(store, publisher, 3, parking=lot, grace_seconds=grace, purges=purges)
    return Rig(pipeline, lot, state, pubsub, purges)


def test_message_for_a_missing_instance_is_parked_and_acknowledged() -> None:
    rig = _rig(grace=60)
    handler = WaitingHandler()
    response = rig.pipeline(TOPIC, handler, cloud_event(data=BODY))
    assert response.status.name == "success"  # the broker's delivery is freed
    assert rig.pubsub.calls == []  # nothing published yet: not rejected
    key = message_key(TOPIC, "tests", "msg-1")
    assert list(rig.lot.parked()) == [key]
    parked = rig.lot.load(key)
    assert parked is not None
    assert (parked.topic, parked.message_id, parked.data) == (TOPIC, "msg-1", BODY)
    assert f"wfw|claim|{key}" not in rig.state.items  # claim given back


def test_parked_message_is_handled_once_when_its_instance_appears() -> None:
    rig = _rig(grace=60)
    handler = WaitingHandler()
    rig.pipeline(TOPIC, handler, cloud_event(data=BODY))
    assert rig.retry_parked(handler) == ["retry"]  # still missing: stays parked
    assert len(rig.lot.parked()) == 1
    handler.exists = True
    assert rig.retry_parked(handler) == ["success"]
    assert handler.effects == ["msg-1"]
    assert rig.lot.parked() == {}
    assert [b["event"] for b in rig.pubsub.bodies()] == ["event_raised"]
    # A late redelivery of the original message has no second effect.
    rig.pipeline(TOPIC, handler, cloud_event(data=BODY))
    assert handler.effects == ["msg-1"]


def test_parked_message_is_rejected_after_the_grace_period() -> None:
    rig = _rig(grace=0.2)
    handler = WaitingHandler()
    rig.pipeline(TOPIC, handler, cloud_event(data=BODY))
    time.sleep(0.25)  # the grace period is measured from when the message was first seen
    assert rig.retry_parked(handler) == ["drop"]
    [rejected] = rig.pubsub.bodies()
    assert rejected["event"] == "rejected"
    assert rejected["instance_id"] == "order-1"
    assert rejected["reason"].startswith("unknown instance order-1 (waited 0s")
    assert rejected["code"] == "unknown_instance"
    assert rig.lot.parked() == {}


def test_without_a_grace_period_an_unknown_instance_is_rejected_at_once() -> None:
    rig = _rig(grace=0)
    response = rig.pipeline(TOPIC, WaitingHandler(), cloud_event(data=BODY))
    assert response.status.name == "drop"
    assert rig.pubsub.bodies()[0]["reason"] == "unknown instance order-1"
    assert rig.pubsub.bodies()[0]["code"] == "unknown_instance"
    assert rig.lot.parked() == {}


PURGED_AT = datetime(2026, 12, 1, 9, 30, 0, 125000, tzinfo=UTC)


def test_a_message_for_a_purged_instance_is_rejected_at_once_saying_when() -> None:
    """Waiting will not bring a purged instance back: no grace period, no parking."""
    rig = _rig(grace=180)
    rig.purges.note("order-1", PURGED_AT)
    response = rig.pipeline(TOPIC, WaitingHandler(), cloud_event(data=BODY))
    assert response.status.name == "drop"
    [rejected] = rig.pubsub.bodies()
    assert (rejected["event"], rejected["instance_id"], rejected["status"]) == (
        "rejected",
        "order-1",
        "PURGED",
    )
    assert rejected["reason"] == (
        "unknown instance order-1: it was purged at 2026-12-01T09:30:00.125000+00:00"
    )
    assert rejected["code"] == "purged"
    assert rig.lot.parked() == {}


def test_a_parked_message_is_rejected_once_its_instance_is_known_purged() -> None:
    rig = _rig(grace=180)
    handler = WaitingHandler()
    rig.pipeline(TOPIC, handler, cloud_event(data=BODY))
    assert rig.retry_parked(handler) == ["retry"]
    rig.purges.note("order-1", PURGED_AT)
    assert rig.retry_parked(handler) == ["drop"]
    assert "purged at" in rig.pubsub.bodies()[0]["reason"]
    assert rig.pubsub.bodies()[0]["code"] == "purged"


def test_a_start_nudges_the_lot() -> None:
    rig = _rig(grace=60)

    class Starter:
        def handle(self, message: Inbound, claim: Claim) -> list[Outbound]:
            return [report(message, EventType.STARTED, "order-1", status="RUNNING")]

    woken = threading.Event()
    stopping = threading.Event()

    def retry(message: Inbound) -> None:
        woken.set()
        stopping.set()

    rig.pipeline(TOPIC, WaitingHandler(), cloud_event(data=BODY))
    runner = threading.Thread(target=rig.lot.run, args=(retry, stopping), daemon=True)
    runner.start()
    time.sleep(0.05)
    started = time.monotonic()
    rig.pipeline("workflow.start", Starter(), cloud_event(message_id="start-1"))
    assert woken.wait(5)
    assert time.monotonic() - started < 0.5  # not the poll interval: at once
    runner.join(5)


def test_the_lot_reads_its_index_seldom_while_nothing_is_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = _rig(grace=60)
    waits: list[float | None] = []
    stopping = threading.Event()

    class RecordingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            if len(waits) == 2:  # parked between the first and second read of the index
                rig.pipeline(TOPIC, WaitingHandler(), cloud_event(data=BODY))
            if len(waits) >= 4:
                stopping.set()
            return True

    monkeypatch.setattr(rig.lot, "_wake", RecordingEvent())
    rig.lot.run(lambda message: None, stopping)
    # first pass at the busy pace; empty index: idle pace; a message parked: busy again
    assert waits[:3] == [
        parking.PARK_POLL_SECONDS,
        parking.PARK_IDLE_POLL_SECONDS,
        parking.PARK_POLL_SECONDS,
    ]
    assert parking.PARK_IDLE_POLL_SECONDS >= 5 * parking.PARK_POLL_SECONDS


@pytest.mark.parametrize("replicas", [2, 5])
def test_index_keeps_every_message_parked_concurrently(replicas: int) -> None:
    """Replicas share the index: optimistic concurrency loses no entry."""
    state = FakeStateClient()
    lots = [ParkingLot(state, "statestore", 3600) for _ in range(replicas)]
    message = Inbound(TOPIC, "m", "tests", "application/json", BODY)

    def park(i: int) -> None:
        for n in range(20):
            lots[i].park(f"key-{i}-{n}", message, 1.0)

    threads = [threading.Thread(target=park, args=(i,)) for i in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lots[0].parked()) == replicas * 20


def test_a_parked_message_rejected_at_last_goes_to_the_dead_letter_topic() -> None:
    """The sidecar dead-letters only what the worker answers `drop`; a parked message was
    acknowledged when it was parked, so the worker moves it there itself."""
    client = FakePublishClient()
    publisher = StatusPublisher(client, Settings(app_id="w", dead_letter_topic="dead"))
    message = Inbound(TOPIC, "msg-7", "ops", "application/json", BODY, 1.0, "com.example")
    publisher.dead_letter(message)
    [call] = client.calls
    assert call["topic_name"] == "dead"
    envelope = call["cloudevent"]
    assert (envelope["id"], envelope["source"], envelope["type"]) == ("msg-7", "ops", "com.example")
    assert envelope["data"] == {"instance_id": "order-1", "data": True}
    StatusPublisher(client, Settings(app_id="w")).dead_letter(message)  # none configured
    assert len(client.calls) == 1


def test_a_start_costs_no_read_of_the_index_while_nothing_is_parked() -> None:
    rig = _rig(grace=60)
    assert rig.lot.parked() == {}  # the lot's last read: empty
    rig.lot.nudge()
    assert not rig.lot._wake.is_set()  # a start does not wake it for a read
    rig.pipeline(TOPIC, WaitingHandler(), cloud_event(data=BODY))  # parked here
    rig.lot._wake.clear()
    rig.lot.nudge()
    assert rig.lot._wake.is_set()
