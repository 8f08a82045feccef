"""The watch (`worker.watch.watcher`): every change others make to an instance is published
once, observed and without correlation_id, under an id derived from the change; changes the
worker noted are left to its handlers; the sweep finds purges, takes stock the first time,
runs in one replica at a time, and costs finished instances only their share of the listing."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from dapr.ext.workflow._durabletask.internal import history_events_pb2 as h
from google.protobuf import timestamp_pb2

from tests.status_contract import schema_errors
from tests.unit.fakes import FakeClock, FakePublishClient, HookedStateClient
from worker.config import Settings
from worker.events import EventType, StatusEvent, now
from worker.expectations import Expectations, Notes, run_of
from worker.gateway import InstanceState, WorkflowGateway
from worker.origin import Origin
from worker.outcomes import Missing
from worker.publisher import Outbound, StatusPublisher
from worker.purges import Purges
from worker.watch import records as records_module
from worker.watch import watcher as watcher_module
from worker.watch.records import Records
from worker.watch.watcher import Watcher, WatchSettings

STORE = "statestore"
ID = "order-1"
SEEN_KEY = f"wfw|seen|{ID}"
NOTES_KEY = f"wfw|expect|{ID}"
WORKER = Origin("publisher", "msg-1")  # the envelope of the worker's own start message
# When the instance was created, as the SDK gives times: naive UTC.
CREATED = (datetime.now(UTC) - timedelta(minutes=2)).replace(tzinfo=None, microsecond=123456)


def at(seconds: float) -> datetime:
    """``seconds`` after CREATED, naive UTC (the SDK's form)."""
    return CREATED + timedelta(seconds=seconds)


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def instance(
    status: str = "RUNNING",
    *,
    updated: datetime | None = None,
    created: datetime = CREATED,
    origin: Origin | None = None,
    instance_id: str = ID,
) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        workflow="approval_workflow",
        status=status,
        created_at=created,
        last_updated_at=updated or created,
        input={"amount": 10},
        origin=origin,
    )


# --- history events, as daprd returns them -------------------------------------------------------


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(utc(value))
    return stamp


def _event(when: datetime, event_id: int = -1, **kind: Any) -> h.HistoryEvent:
    return h.HistoryEvent(eventId=event_id, timestamp=_stamp(when), **kind)


def started(when: datetime) -> h.HistoryEvent:
    return _event(when, executionStarted=h.ExecutionStartedEvent(name="approval_workflow"))


def raised(when: datetime, name: str = "approval_decision") -> h.HistoryEvent:
    return _event(when, eventRaised=h.EventRaisedEvent(name=name))


def scheduled(when: datetime, task: int, name: str = "process_order") -> h.HistoryEvent:
    return _event(when, task, taskScheduled=h.TaskScheduledEvent(name=name))


def completed(when: datetime, task: int) -> h.HistoryEvent:
    return _event(when, taskCompleted=h.TaskCompletedEvent(taskScheduledId=task))


def waiting_for(when: datetime, name: str = "approval_decision") -> list[h.HistoryEvent]:
    """A wait for an event without a timeout (the SDK's marker timer) and a durable timer."""
    never = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999)
    return [
        _event(
            when,
            1,
            timerCreated=h.TimerCreatedEvent(
                fireAt=never, externalEvent=h.TimerOriginExternalEvent(name=name)
            ),
        ),
        _event(when, 2, timerCreated=h.TimerCreatedEvent(fireAt=_stamp(ago(-3600)))),
    ]


# --- fakes ---------------------------------------------------------------------------------------


@dataclass
class WatchGateway:
    """`WorkflowGateway` as the watch uses it: states as the sidecar shows them (without
    payloads there is no input, so no origin), instance ids a page a call, histories; every
    call counted."""

    states: dict[str, InstanceState] = field(default_factory=dict)
    histories: dict[str, list[h.HistoryEvent]] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    behind: int = 0  # so many history reads to come miss the newest event (not stored yet)
    # States shown, one a read, before the current one (a change not stored yet).
    stale: dict[str, list[InstanceState]] = field(default_factory=dict)

    def get_state(self, instance_id: str, *, payloads: bool = True) -> InstanceState | None:
        self.calls.append(("get_state", instance_id, payloads))
        earlier = self.stale.get(instance_id)
        found = earlier.pop(0) if earlier else self.states.get(instance_id)
        if found is None or payloads:
            return found
        return replace(found, input=None, origin=None)

    def instance_ids(self, page_size: int = 500) -> Iterator[str]:
        ids = list(self.states)
        for start in range(0, max(len(ids), 1), page_size):
            self.calls.append(("list", page_size))
            yield from ids[start : start + page_size]

    def history(self, instance_id: str) -> list[h.HistoryEvent]:
        self.calls.append(("history", instance_id))
        if instance_id not in self.states:
            raise Missing(instance_id)
        events = list(self.histories.get(instance_id, []))
        if self.behind > 0:
            self.behind -= 1
            return events[:-1]
        return events

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


@dataclass
class Rig:
    gateway: WatchGateway = field(default_factory=WatchGateway)
    store: HookedStateClient = field(default_factory=HookedStateClient)
    pubsub: FakePublishClient = field(default_factory=FakePublishClient)
    # No stall unless a test asks: then a sweep reads no history of a recent instance.
    settings: WatchSettings = field(default_factory=lambda: WatchSettings(stall_seconds=3600))

    @property
    def purges(self) -> Purges:
        """Where purges are noted (shared by replicas and handlers, in the store)."""
        return Purges(self.store, STORE, 3600)

    @property
    def notes(self) -> Expectations:
        """The handlers' notes (any replica's: they live in the store)."""
        return Expectations(self.store, STORE, 3600)

    def replica(self, **settings: float) -> tuple[Watcher, Records]:
        """A watcher of another replica: its own records object (and replica id), the shared
        store, sidecar and topic."""
        records = Records(self.store, STORE, 3600)
        watcher = Watcher(
            cast(WorkflowGateway, self.gateway),
            StatusPublisher(self.pubsub, Settings(app_id="worker")),
            self.notes,
            records,
            replace(self.settings, **settings),
            self.purges,
        )
        return watcher, records

    def watcher(self, **settings: float) -> Watcher:
        return self.replica(**settings)[0]

    def set(self, state: InstanceState) -> None:
        self.gateway.states[state.instance_id] = state

    def purge(self, instance_id: str = ID) -> None:
        del self.gateway.states[instance_id]
        self.gateway.histories.pop(instance_id, None)

    def bodies(self) -> list[dict[str, Any]]:
        bodies = self.pubsub.bodies()
        for body in bodies:
            assert schema_errors(body) == [], body
            assert body["observed"] is True, body
            assert "correlation_id" not in body, body
        return bodies

    def events(self) -> list[str]:
        return [body["event"] for body in self.bodies()]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- starts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [WORKER, Origin("publisher", "msg-1", instance_id=ID)],
    ids=["envelope", "envelope-naming-it"],
)
def test_an_instance_the_worker_started_is_not_announced(rig: Rig, origin: Origin) -> None:
    rig.set(instance(origin=origin))
    watcher = rig.watcher()
    assert watcher.check(ID) == "RUNNING"
    assert watcher.check(ID) == "RUNNING"
    assert rig.pubsub.calls == []  # its start message's handler reported `started`


def test_an_instance_started_by_others_is_announced_once(rig: Rig) -> None:
    rig.set(instance())  # `dapr workflow run`: no envelope in its input
    watcher = rig.watcher()
    watcher.check(ID)
    watcher.check(ID)
    rig.watcher().check(ID)  # another replica, later
    [body] = rig.bodies()
    assert body["event"] == "started"
    assert (body["instance_id"], body["workflow"], body["status"]) == (
        ID,
        "approval_workflow",
        "RUNNING",
    )
    assert when(body["occurred_at"]) == utc(CREATED)
    assert when(body["created_at"]) == utc(CREATED)
    [call] = rig.pubsub.calls
    assert call["cloudevent"]["subject"] == ID
    assert when(call["cloudevent"]["time"]) == utc(CREATED)


def test_a_copy_of_a_worker_started_instance_is_someone_elses(rig: Rig) -> None:
    """`dapr workflow rerun` copies the input, envelope and all, into another instance."""
    rig.set(instance(origin=Origin("publisher", "msg-1", instance_id="order-0")))
    rig.watcher().check(ID)
    assert rig.events() == ["started"]


@pytest.mark.parametrize("origin", [None, WORKER], ids=["by-others", "by-the-worker"])
def test_a_pending_instance_is_not_announced_until_it_runs(rig: Rig, origin: Origin | None) -> None:
    # The sidecar shows a PENDING instance without its input and without a creation time.
    unset = datetime(1970, 1, 1)
    rig.set(instance("PENDING", created=unset, updated=unset))
    watcher = rig.watcher()
    assert watcher.check(ID) == "PENDING"
    assert rig.pubsub.calls == []
    rig.set(instance(created=at(5), origin=origin))
    watcher.check(ID)
    if origin is None:
        [body] = rig.bodies()
        assert body["event"] == "started"
        assert when(body["occurred_at"]) == utc(at(5))
    else:
        assert rig.pubsub.calls == []


@pytest.mark.parametrize("before", ["PENDING", "COMPLETED"], ids=["pending", "new-run"])
def test_a_new_run_is_recorded_so_its_start_is_announced_once(rig: Rig, before: str) -> None:
    unset = datetime(1970, 1, 1)
    if before == "PENDING":
        rig.set(instance("PENDING", created=unset, updated=unset))
    else:
        rig.set(instance("COMPLETED", updated=at(2), origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.set(instance(created=at(5)))  # runs now / started again by someone else
    watcher.check(ID)
    watcher.check(ID)
    rig.watcher().check(ID)
    assert rig.events() == ["started"]


# --- suspend, resume, terminate, ends ------------------------------------------------------------


def test_suspend_resume_terminate_by_others_are_published_once_each(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    for seconds, status in [(10, "SUSPENDED"), (20, "RUNNING"), (30, "TERMINATED")]:
        rig.set(instance(status, updated=at(seconds), origin=WORKER))
        assert watcher.check(ID) == status
        watcher.check(ID)
    bodies = rig.bodies()
    assert [(b["event"], b["status"], b["previous_status"]) for b in bodies] == [
        ("suspended", "SUSPENDED", "RUNNING"),
        ("resumed", "RUNNING", "SUSPENDED"),
        ("terminated", "TERMINATED", "RUNNING"),
    ]
    assert [when(b["occurred_at"]) for b in bodies] == [utc(at(10)), utc(at(20)), utc(at(30))]
    assert len(set(rig.pubsub.event_ids())) == 3


def test_a_change_the_worker_noted_is_left_to_its_handler(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.notes.expect_status(ID, "SUSPENDED")  # the control handler, before its sidecar call
    rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
    watcher.check(ID)
    assert rig.pubsub.calls == []
    # Resumed, then suspended again, by someone else: the note was used by the first suspend.
    rig.set(instance("RUNNING", updated=at(20), origin=WORKER))
    watcher.check(ID)
    rig.set(instance("SUSPENDED", updated=at(30), origin=WORKER))
    watcher.check(ID)
    assert rig.events() == ["resumed", "suspended"]


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED"])
def test_workflow_ends_are_left_to_the_workflow(rig: Rig, status: str) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.set(instance(status, updated=at(10), origin=WORKER))
    assert watcher.check(ID) == status
    assert rig.pubsub.calls == []  # its report activity publishes it
    rig.purge()
    watcher.check(ID)
    [purged] = rig.bodies()
    assert (purged["event"], purged["previous_status"]) == ("purged", status)


# --- two replicas, one change --------------------------------------------------------------------


@pytest.mark.parametrize("change", ["started", "suspended"])
def test_one_change_seen_by_two_replicas_at_once_is_published_under_one_id(
    rig: Rig, change: str
) -> None:
    first, second = rig.watcher(), rig.watcher()
    if change == "started":
        rig.set(instance())
    else:
        rig.set(instance(origin=WORKER))
        first.check(ID)
        rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
    # `second` has published the change and is about to record it when `first` checks it.
    rig.store.before_save[SEEN_KEY] = lambda: first.check(ID)
    second.check(ID)
    assert not rig.store.before_save, "the checks did overlap"
    first.check(ID)
    second.check(ID)
    assert set(rig.events()) == {change}
    assert len(set(rig.pubsub.event_ids())) == 1


def test_a_noted_change_seen_by_two_replicas_at_once_is_published_by_neither(rig: Rig) -> None:
    first, second = rig.watcher(), rig.watcher()
    rig.set(instance(origin=WORKER))
    first.check(ID)
    rig.notes.expect_status(ID, "SUSPENDED")
    rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
    rig.store.before_save[SEEN_KEY] = lambda: first.check(ID)
    second.check(ID)
    assert not rig.store.before_save
    assert rig.pubsub.calls == []


# --- purges --------------------------------------------------------------------------------------


def test_a_purge_by_others_is_published_once(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher, records = rig.replica()
    watcher.sweep()
    rig.purge()  # `dapr workflow purge`, or daprd's retention policy
    watcher.sweep()
    watcher.sweep()
    [body] = rig.bodies()
    assert (body["event"], body["instance_id"], body["status"], body["previous_status"]) == (
        "purged",
        ID,
        "PURGED",
        "RUNNING",
    )
    assert records.known() == {}
    assert rig.store.keys_with("wfw|seen|") == []
    purged_at = rig.purges.purged_at(ID)  # a message about it is now rejected at once
    assert purged_at is not None
    assert purged_at == datetime.fromisoformat(body["occurred_at"])


def test_a_purge_found_by_a_check_is_not_published_again_by_the_sweep(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher, records = rig.replica()
    watcher.sweep()
    rig.purge()
    assert watcher.check(ID) is None
    watcher.sweep()
    assert rig.events() == ["purged"]
    assert records.known() == {}


def test_a_purge_the_worker_noted_is_not_published(rig: Rig) -> None:
    rig.set(instance("COMPLETED", origin=WORKER))
    watcher, records = rig.replica()
    watcher.sweep()
    rig.notes.expect_status(ID, "PURGED")  # the control handler, before its purge
    rig.purge()
    watcher.sweep()
    assert rig.pubsub.calls == []
    assert records.known() == {}


def test_a_noted_purge_seen_by_two_replicas_at_once_is_published_by_neither(rig: Rig) -> None:
    first, second = rig.watcher(), rig.watcher()
    rig.set(instance("COMPLETED", origin=WORKER))
    first.check(ID)
    rig.notes.expect_status(ID, "PURGED")
    rig.purge()
    # `second` has read what the feed accounted for when `first` handles the purge in full.
    rig.store.before_get[NOTES_KEY] = lambda: first.check(ID)
    second.check(ID)
    assert not rig.store.before_get, "the checks did overlap"
    assert rig.pubsub.calls == []


# --- the sweep: first ever, restarts, inventory --------------------------------------------------


def test_the_first_sweep_ever_only_takes_stock(rig: Rig) -> None:
    rig.set(instance())  # started by others before the watch was turned on
    watcher, records = rig.replica()
    watcher.sweep()
    assert rig.pubsub.calls == []
    assert records.known() == {ID: "RUNNING"}
    rig.set(instance(instance_id="order-2"))
    watcher.sweep()
    assert [(b["event"], b["instance_id"]) for b in rig.bodies()] == [("started", "order-2")]


def test_a_first_sweep_that_found_nothing_took_stock_all_the_same(rig: Rig) -> None:
    watcher, records = rig.replica()
    watcher.sweep()
    assert records.known() == {}
    records.release_lease()  # the worker stopped
    rig.set(instance())
    rig.watcher().sweep()  # restarted
    assert rig.events() == ["started"]


def test_a_restarted_watcher_publishes_what_changed_while_none_ran(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    rig.set(instance(origin=WORKER, instance_id="order-2"))
    watcher, records = rig.replica()
    watcher.sweep()
    records.release_lease()  # the worker stopped
    rig.purge(ID)
    rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER, instance_id="order-2"))
    restarted = rig.watcher(recheck_seconds=0)
    restarted.sweep()
    restarted.sweep()
    assert sorted((b["event"], b["instance_id"]) for b in rig.bodies()) == [
        ("purged", ID),
        ("suspended", "order-2"),
    ]


def test_an_instance_announced_on_a_hint_and_purged_before_the_next_sweep_is_purged(
    rig: Rig,
) -> None:
    sweeper = rig.watcher()
    sweeper.sweep()
    rig.set(instance())
    sweeper.check(ID)  # hinted: announced at once, and taken into the inventory
    rig.purge()
    sweeper.sweep()
    assert rig.events() == ["started", "purged"]


def test_what_another_replica_announced_is_not_announced_again_by_the_sweep(rig: Rig) -> None:
    sweeper = rig.watcher()
    sweeper.sweep()
    rig.set(instance())
    rig.watcher().check(ID)  # hinted on another replica
    sweeper.sweep()
    sweeper.sweep()
    assert rig.events() == ["started"]


def test_an_unfinished_instance_is_read_again_every_recheck_seconds(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(watcher_module, "time", clock)
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(recheck_seconds=60)
    watcher.sweep()
    reads = rig.gateway.count("get_state")
    clock.now += 59
    watcher.sweep()
    assert rig.gateway.count("get_state") == reads
    rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
    clock.now += 2
    watcher.sweep()
    assert rig.events() == ["suspended"]


# --- the lease -----------------------------------------------------------------------------------


def test_only_the_lease_holder_sweeps_and_another_takes_over_when_it_dies(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(records_module, "time", clock)
    rig.set(instance(origin=WORKER))
    holder, other = rig.watcher(lease_seconds=20), rig.watcher(lease_seconds=20)
    holder.sweep()
    rig.purge()  # the holder was SIGKILLed: it gives nothing back
    listed = rig.gateway.count("list")
    clock.now += 10
    other.sweep()
    assert (other.sweeps, rig.gateway.count("list")) == (0, listed)
    assert rig.pubsub.calls == []
    clock.now += 11
    other.sweep()
    assert other.sweeps == 1
    assert rig.events() == ["purged"]  # made while nobody swept: from the stored inventory
    holder_sweeps = holder.sweeps
    holder.sweep()  # back, but the lease is the other's now
    assert holder.sweeps == holder_sweeps


def test_a_sweep_over_finished_instances_costs_only_the_id_listing(rig: Rig) -> None:
    """The cost model of docs/benchmark/watch-cost.md: finished instances cost their share
    of the listing (_LIST_PAGE ids a call), never a read each."""
    ids = [f"done-{n:04}" for n in range(2000)]
    for instance_id in ids:
        rig.set(instance("COMPLETED", origin=WORKER, instance_id=instance_id))
    Records(rig.store, STORE, 3600).save_known(dict.fromkeys(ids, "COMPLETED"))
    watcher = rig.watcher()
    saved = len(rig.store.saves)
    watcher.sweep()
    watcher.sweep()
    assert watcher.sweeps == 2
    assert rig.gateway.count("list") == 2 * math.ceil(len(ids) / watcher_module._LIST_PAGE)
    assert rig.gateway.count("get_state") == 0
    assert rig.gateway.count("history") == 0
    assert [key for key in rig.store.gets if key.startswith("wfw|seen|")] == []
    assert [s.key for s in rig.store.saves[saved:] if s.key.startswith("wfw|seen|")] == []
    assert rig.pubsub.calls == []


# --- events raised -------------------------------------------------------------------------------


def test_events_raised_by_others_are_published_once_each(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    first = utc(at(10))
    rig.gateway.histories[ID] = [started(CREATED), *waiting_for(CREATED), raised(first)]
    watcher.check(ID, raised={first})
    watcher.check(ID, raised={first})  # the same hint again
    second = utc(at(20))
    rig.gateway.histories[ID].append(raised(second))
    watcher.check(ID, raised={second})
    bodies = rig.bodies()
    assert [(b["event"], b["event_name"], b["status"]) for b in bodies] == [
        ("event_raised", "approval_decision", "RUNNING"),
        ("event_raised", "approval_decision", "RUNNING"),
    ]
    assert [when(b["occurred_at"]) for b in bodies] == [first, second]
    assert len(set(rig.pubsub.event_ids())) == 2


def test_the_workers_own_raises_are_left_to_its_handler(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.notes.expect_raise(ID, "approval_decision")  # the approval handler raised one
    times = {utc(at(10)), utc(at(11)), utc(at(12))}
    rig.gateway.histories[ID] = [
        started(CREATED),
        raised(at(10)),
        raised(at(11)),  # and someone else one more
        raised(at(12), "cancel"),  # and another event
    ]
    watcher.check(ID, raised=times)
    watcher.check(ID, raised=times)
    assert sorted(b["event_name"] for b in rig.bodies()) == ["approval_decision", "cancel"]


def test_a_hinted_raise_not_in_the_history_yet_is_history_behind(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    hinted = utc(at(10))
    rig.gateway.histories[ID] = [started(CREATED)]
    with pytest.raises(watcher_module._HistoryBehind):
        watcher.check(ID, raised={hinted})
    assert rig.pubsub.calls == []
    rig.gateway.histories[ID].append(raised(hinted))
    watcher.check(ID, raised={hinted})
    assert rig.events() == ["event_raised"]


def test_a_finished_instance_is_not_waited_for(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.set(instance("TERMINATED", updated=at(20), origin=WORKER))
    rig.gateway.histories[ID] = [started(CREATED), raised(at(10))]
    watcher.check(ID, raised={utc(at(15))})  # never stored: it came after the end
    assert sorted(rig.events()) == ["event_raised", "terminated"]


def test_a_raise_no_hint_told_of_is_published_by_the_sweep(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(recheck_seconds=0)
    watcher.sweep()
    rig.gateway.histories[ID] = [started(CREATED), raised(at(10))]
    rig.set(instance(updated=at(10), origin=WORKER))
    watcher.sweep()
    assert rig.events() == ["event_raised"]


def test_the_workers_raises_into_an_earlier_run_do_not_hide_raises_into_a_new_one(
    rig: Rig,
) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.notes.expect_raise(ID, "approval_decision", run_of(CREATED))  # as the handler notes it
    rig.gateway.histories[ID] = [started(CREATED), raised(at(10))]
    watcher.check(ID, raised={utc(at(10))})
    rig.set(instance("COMPLETED", updated=at(20), origin=WORKER))
    watcher.check(ID)
    assert rig.pubsub.calls == []
    # Started again by the worker with replace: true: a new run, its history wiped.
    rig.set(instance(created=at(30), origin=Origin("publisher", "msg-2")))
    rig.gateway.histories[ID] = [started(at(30)), raised(at(40))]  # raised by someone else
    watcher.check(ID, raised={utc(at(40))})
    assert rig.events() == ["event_raised"]


def test_raises_into_an_earlier_generation_do_not_hide_raises_into_the_next(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.gateway.histories[ID] = [started(CREATED), raised(at(10))]  # raised by someone else
    watcher.check(ID, raised={utc(at(10))})
    # continue-as-new: the same life, a new creation time and a history of its own
    rig.set(instance(created=at(30), updated=at(30), origin=WORKER))
    rig.gateway.histories[ID] = [started(at(30)), raised(at(40))]  # someone else again
    watcher.check(ID, raised={utc(at(40))})
    assert rig.events() == ["event_raised", "event_raised"]
    assert len(set(rig.pubsub.event_ids())) == 2


def test_notes_written_before_runs_were_told_apart_count_in_every_run() -> None:
    notes = Notes.from_json('{"statuses": {}, "raised": {"approval_decision": 2}}')
    assert notes.raised_in("2026-11-30T09:00:00+00:00") == {"approval_decision": 2}
    notes.raised.setdefault("2026-11-30T09:00:00+00:00", {})["approval_decision"] = 1
    assert notes.raised_in("2026-11-30T09:00:00+00:00") == {"approval_decision": 3}
    assert notes.raised_in("2026-11-30T10:00:00+00:00") == {"approval_decision": 2}


# --- stalls --------------------------------------------------------------------------------------


def test_a_step_in_flight_too_long_is_stalled_once_then_unstalled(rig: Rig) -> None:
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), scheduled(began, 1)]
    watcher = rig.watcher(stall_seconds=300)
    watcher.check(ID, stalls=True)
    watcher.check(ID, stalls=True)
    [stalled] = rig.bodies()
    assert stalled["event"] == "stalled"
    assert stalled["status"] == "RUNNING"
    step = stalled["step"]
    assert (step["kind"], step["name"], step["outcome"]) == ("activity", "process_order", "pending")
    assert when(step["started_at"]) == began
    assert "process_order" in stalled["reason"]
    answered = ago(1)
    rig.gateway.histories[ID].append(completed(answered, 1))
    rig.set(
        instance(
            created=began.replace(tzinfo=None),
            updated=answered.replace(tzinfo=None),
            origin=WORKER,
        )
    )
    watcher.check(ID, stalls=True)
    watcher.check(ID, stalls=True)
    assert rig.events() == ["stalled", "unstalled"]
    assert len(set(rig.pubsub.event_ids())) == 2


def test_a_stalled_instance_that_ends_is_unstalled(rig: Rig) -> None:
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), scheduled(began, 1)]
    watcher = rig.watcher(stall_seconds=300)
    watcher.check(ID, stalls=True)
    rig.set(
        instance(
            "TERMINATED",
            created=began.replace(tzinfo=None),
            updated=ago(1).replace(tzinfo=None),
            origin=WORKER,
        )
    )
    watcher.check(ID)
    watcher.check(ID, stalls=True)
    assert sorted(rig.events()) == ["stalled", "terminated", "unstalled"]


def test_no_unstalled_without_a_stalled_before_it(rig: Rig) -> None:
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), scheduled(began, 1)]
    watcher = rig.watcher(stall_seconds=300, recheck_seconds=0)
    watcher.sweep()  # the first sweep ever: takes stock, announces nothing
    answered = ago(1)
    rig.gateway.histories[ID].append(completed(answered, 1))
    rig.set(
        instance(
            created=began.replace(tzinfo=None),
            updated=answered.replace(tzinfo=None),
            origin=WORKER,
        )
    )
    watcher.sweep()
    assert rig.events() in ([], ["stalled", "unstalled"])


def test_a_quiet_instance_costs_one_history_read(rig: Rig) -> None:
    """Waiting for an event or a timer is no stall, and a re-check of an instance that has not
    changed since does not read its history again."""
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), *waiting_for(began)]
    watcher = rig.watcher(stall_seconds=300, recheck_seconds=0)
    for _ in range(5):
        watcher.sweep()
    assert rig.gateway.count("get_state") >= 5  # re-read every sweep (recheck_seconds=0)
    assert rig.gateway.count("history") == 1
    assert rig.pubsub.calls == []


# --- run: hints and the lease --------------------------------------------------------------------


def _running(watcher: Watcher) -> tuple[threading.Event, threading.Thread]:
    stopping = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stopping,), daemon=True)
    thread.start()
    wait_until(lambda: watcher.sweeps >= 1)  # its first sweep, at start
    return stopping, thread


def _stop(stopping: threading.Event, thread: threading.Thread) -> None:
    stopping.set()
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_run_checks_a_hint_at_once_and_gives_the_lease_back_when_stopped(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(sweep_seconds=30, lease_seconds=60)  # no second sweep in this test
    stopping, thread = _running(watcher)
    try:
        rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
        watcher.hint(ID)
        wait_until(lambda: len(rig.pubsub.calls) >= 1)
    finally:
        _stop(stopping, thread)
    assert rig.events() == ["suspended"]
    assert Records(rig.store, STORE, 3600).hold_lease(60), "released: no wait for the next"


def test_run_looks_again_until_the_history_holds_a_hinted_raise(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(sweep_seconds=30, lease_seconds=60)
    stopping, thread = _running(watcher)
    hinted = utc(at(10))
    try:
        rig.gateway.histories[ID] = [started(CREATED), raised(hinted)]
        rig.gateway.behind = 3  # the sidecar stores the raised event a little later
        watcher.hint(ID, [hinted])
        wait_until(lambda: len(rig.pubsub.calls) >= 1)
    finally:
        _stop(stopping, thread)
    assert rig.gateway.behind == 0
    [body] = rig.bodies()
    assert (body["event"], when(body["occurred_at"])) == ("event_raised", hinted)


def test_run_looks_again_until_the_sidecar_shows_the_hinted_status(rig: Rig) -> None:
    """daprd stores a work item's outcome after the app answered it: a check can come first."""
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(sweep_seconds=30, lease_seconds=60)
    stopping, thread = _running(watcher)
    try:
        watcher.check(ID)  # the feed accounts for it as RUNNING
        rig.gateway.stale[ID] = [instance(origin=WORKER)] * 3
        rig.set(instance("SUSPENDED", updated=at(10), origin=WORKER))
        watcher.hint(ID, status="SUSPENDED")
        wait_until(lambda: len(rig.pubsub.calls) >= 1)
    finally:
        _stop(stopping, thread)
    assert rig.gateway.stale[ID] == []
    assert rig.events() == ["suspended"]


def test_a_hinted_start_shown_pending_is_looked_at_again_until_it_runs(rig: Rig) -> None:
    """A short run another client started: the check after its first work item may still
    find it PENDING; no later work item would be hinted (steps), so it must look again."""
    unset = datetime(1970, 1, 1)
    watcher = rig.watcher(sweep_seconds=30, lease_seconds=60)
    stopping, thread = _running(watcher)  # its first sweep found nothing
    try:
        rig.set(instance(created=at(5)))
        rig.gateway.stale[ID] = [instance("PENDING", created=unset, updated=unset)] * 2
        watcher.hint(ID, status="RUNNING")
        wait_until(lambda: len(rig.pubsub.calls) >= 1)
    finally:
        _stop(stopping, thread)
    assert rig.gateway.stale[ID] == []
    assert rig.events() == ["started"]


def test_a_hinted_status_is_not_waited_for_once_the_instance_has_ended(rig: Rig) -> None:
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher()
    watcher.check(ID)
    rig.set(instance("COMPLETED", updated=at(10), origin=WORKER))  # resumed, then it ended
    assert watcher.check(ID, expect="RUNNING") == "COMPLETED"


def test_run_gives_up_waiting_for_a_hinted_raise_and_counts_the_history(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "_BEHIND_TRIES", 3)
    rig.set(instance(origin=WORKER))
    watcher = rig.watcher(sweep_seconds=30, lease_seconds=60)
    stopping, thread = _running(watcher)
    stored = utc(at(10))
    try:
        rig.gateway.histories[ID] = [started(CREATED), raised(stored)]
        # A hint whose time the history never shows (stamped differently): not for ever.
        watcher.hint(ID, [stored + timedelta(milliseconds=1)])
        wait_until(lambda: len(rig.pubsub.calls) >= 1)
    finally:
        _stop(stopping, thread)
    [body] = rig.bodies()
    assert (body["event"], when(body["occurred_at"])) == ("event_raised", stored)


def test_a_worker_start_purged_before_the_next_sweep_is_still_published(rig: Rig) -> None:
    """daprd's retention policy can purge a short run within a second of its end: the hook
    tells the sweeping replica of every start the worker made, so the purge is noticed."""
    watcher, records = rig.replica()
    watcher.sweep()  # takes the lease; nothing exists yet
    watcher.started_by_worker("quick-1")  # started, ran and was purged before the next sweep
    watcher.sweep()
    assert rig.events() == ["purged"]
    [body] = rig.pubsub.bodies()
    assert (body["instance_id"], body["previous_status"], body["observed"]) == (
        "quick-1",
        "RUNNING",
        True,
    )
    watcher.sweep()
    assert rig.events() == ["purged"]  # once
    assert records.known() == {}


def test_a_start_the_worker_reported_and_saw_finish_costs_the_sweep_no_read(rig: Rig) -> None:
    """The worker's own start and completion are reported by its handler and workflow: the
    sweeping replica takes both into its inventory and reads the instance for neither."""
    watcher = rig.watcher(recheck_seconds=0)
    watcher.sweep()  # takes the lease; nothing exists yet
    rig.set(instance(origin=WORKER))
    watcher.started_by_worker(ID)
    publisher = StatusPublisher(FakePublishClient(), Settings(app_id="worker"))
    publisher.listeners.append(watcher.published)
    publisher.publish(Outbound("done", _reported(EventType.COMPLETED, "COMPLETED")))
    rig.set(instance("COMPLETED", updated=at(5), origin=WORKER))
    watcher.sweep()
    watcher.sweep()
    assert rig.gateway.count("get_state") == 0
    assert watcher.inventory() == ({"COMPLETED": 1}, 0)
    assert rig.pubsub.calls == []


def test_a_start_the_worker_reported_waits_for_its_re_check(rig: Rig) -> None:
    watcher = rig.watcher(recheck_seconds=60)
    watcher.sweep()
    rig.set(instance(origin=WORKER))
    watcher.started_by_worker(ID)
    watcher.sweep()  # not a new id (the hook told of it) and not due yet: no read
    assert rig.gateway.count("get_state") == 0
    assert watcher.inventory() == ({"RUNNING": 1}, 0)


def test_a_start_the_worker_reported_is_still_re_checked_while_it_runs(rig: Rig) -> None:
    watcher = rig.watcher(recheck_seconds=0)
    watcher.sweep()
    rig.set(instance(origin=WORKER))
    watcher.started_by_worker(ID)
    rig.set(instance("TERMINATED", updated=at(5), origin=WORKER))  # by someone else
    watcher.sweep()  # a re-check is due at once (recheck_seconds=0)
    assert rig.events() == ["terminated"]
    assert watcher.inventory() == ({"TERMINATED": 1}, 0)


def test_a_stalled_instance_the_worker_saw_finish_is_still_unstalled_by_the_sweep(
    rig: Rig,
) -> None:
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), scheduled(began, 1)]
    watcher = rig.watcher(stall_seconds=300, recheck_seconds=0)
    watcher.sweep()  # takes stock
    watcher.sweep()
    assert rig.events() == ["stalled"]
    done = ago(1)
    rig.gateway.histories[ID].append(completed(done, 1))
    rig.set(
        instance(
            "COMPLETED",
            created=began.replace(tzinfo=None),
            updated=done.replace(tzinfo=None),
            origin=WORKER,
        )
    )
    watcher.published(Outbound("done", _reported(EventType.COMPLETED, "COMPLETED")))
    watcher.sweep()
    assert rig.events() == ["stalled", "unstalled"]


def test_statuses_the_worker_publishes_for_instances_it_does_not_know_are_ignored(
    rig: Rig,
) -> None:
    watcher = rig.watcher()
    watcher.sweep()
    watcher.published(Outbound("x", _reported(EventType.COMPLETED, "COMPLETED")))
    watcher.published(Outbound("y", _reported(EventType.REJECTED, "COMPLETED")))
    assert watcher.inventory() == ({}, 0)


def _reported(kind: EventType, status: str) -> StatusEvent:
    return StatusEvent(
        event=kind, instance_id=ID, workflow="approval_workflow", status=status, occurred_at=now()
    )


def test_a_resume_in_a_new_generation_is_still_published(rig: Rig) -> None:
    """A counter continues as new every second: its creation time moves on while it lives,
    and a resume that lands in a new generation must still be told (seen in CI)."""
    watcher = rig.watcher()
    rig.set(instance(origin=WORKER))
    watcher.check(ID)
    rig.set(instance("SUSPENDED", updated=at(5), origin=WORKER))
    watcher.check(ID)
    rig.set(instance(updated=at(9), created=at(8).replace(tzinfo=None), origin=WORKER))
    watcher.check(ID)
    assert rig.events() == ["suspended", "resumed"]


# --- inventory (for metrics) ---------------------------------------------------------------------


def test_the_sweeping_replica_counts_instances_per_status_and_the_stalled(rig: Rig) -> None:
    began = ago(400)
    rig.set(instance(created=began.replace(tzinfo=None), origin=WORKER))
    rig.gateway.histories[ID] = [started(began), scheduled(began, 1)]
    rig.set(instance("COMPLETED", instance_id="other-1", origin=WORKER))
    watcher = rig.watcher(stall_seconds=300, recheck_seconds=0)
    assert watcher.inventory() is None  # not sweeping (yet): another replica may be
    watcher.sweep()  # the first sweep ever: takes stock (a stall nobody was told of: none)
    assert watcher.inventory() == ({"RUNNING": 1, "COMPLETED": 1}, 0)
    watcher.sweep()
    assert rig.events() == ["stalled"]
    assert watcher.inventory() == ({"RUNNING": 1, "COMPLETED": 1}, 1)
    rig.purge()
    watcher.sweep()
    assert watcher.inventory() == ({"COMPLETED": 1}, 0)
