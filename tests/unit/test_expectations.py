"""A handler's note that it is about to change an instance: it accounts for the one change it
announced (also for a second watcher looking at that change at once), never for a later one,
and expires; notes from concurrent writers are all kept."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import grpc
import pytest
from dapr.clients.grpc._state import StateOptions

from tests.unit.fakes import FakeClock, FakeRpcError, HookedStateClient
from worker import expectations
from worker.expectations import Expectations, Notes, noted_run, run_of
from worker.outcomes import Transient

STORE = "statestore"
ID = "order-1"
KEY = f"wfw|expect|{ID}"
FIVE_MINUTES = 300.0  # docs/concepts/watch.md: a worker-made change's note expires after 5 min


@pytest.fixture
def store() -> HookedStateClient:
    return HookedStateClient()


@pytest.fixture
def notes(store: HookedStateClient) -> Expectations:
    return Expectations(store, STORE, 3600)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(expectations, "time", clock)
    return clock


def _watcher(store: HookedStateClient) -> Expectations:
    """How another watcher (another replica) reads the same notes."""
    return Expectations(store, STORE, 3600)


def test_a_note_accounts_for_the_change_it_announced_and_no_later_one(
    store: HookedStateClient, notes: Expectations
) -> None:
    notes.expect_status(ID, "SUSPENDED")
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    # The same change again: a second watcher that looked at it at the same time.
    assert _watcher(store).consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    # Resumed and suspended again by someone else: not the worker's change.
    assert not _watcher(store).consume_status(ID, "SUSPENDED", "SUSPENDED@t2")
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")  # still that one's


def test_a_note_is_for_its_status_and_instance_only(notes: Expectations) -> None:
    notes.expect_status(ID, "SUSPENDED")
    assert not notes.consume_status(ID, "TERMINATED", "TERMINATED@t1")
    assert not notes.consume_status("order-2", "SUSPENDED", "SUSPENDED@t1")
    # Those looks did not use it up.
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")


def test_without_a_note_nothing_is_the_workers(notes: Expectations) -> None:
    assert not notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    assert not notes.consume_status(ID, "PURGED", "purged:run")


def test_a_new_note_accounts_for_the_next_change(notes: Expectations) -> None:
    notes.expect_status(ID, "SUSPENDED")
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    notes.expect_status(ID, "SUSPENDED")  # the worker suspends it again, later
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t3")


def test_two_watchers_using_one_note_for_different_changes_at_once_agree(
    store: HookedStateClient, notes: Expectations
) -> None:
    """Both find the note unused; the one that records its change first has it, the other is
    told no after its write conflicts."""
    notes.expect_status(ID, "SUSPENDED")
    other: list[bool] = []
    store.before_save[KEY] = lambda: other.append(
        _watcher(store).consume_status(ID, "SUSPENDED", "SUSPENDED@t2")
    )
    mine = notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    assert not store.before_save, "the other watcher wrote in between"
    assert other == [True]
    assert mine is False
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t2")
    assert not notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")


def test_two_watchers_using_one_note_for_the_same_change_at_once_both_find_it(
    store: HookedStateClient, notes: Expectations
) -> None:
    notes.expect_status(ID, "SUSPENDED")
    other: list[bool] = []
    store.before_save[KEY] = lambda: other.append(
        _watcher(store).consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    )
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    assert not store.before_save
    assert other == [True]


def test_a_withdrawn_note_accounts_for_nothing(notes: Expectations) -> None:
    notes.expect_status(ID, "SUSPENDED")
    notes.expect_status(ID, "PURGED")
    notes.expect_raise(ID, "approval_decision")
    notes.withdraw_status(ID, "SUSPENDED")  # the sidecar call failed
    assert not notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    assert notes.consume_status(ID, "PURGED", "purged:run")  # the others stay
    assert notes.get(ID).raised_in("") == {"approval_decision": 1}
    notes.withdraw_status(ID, "TERMINATED")  # nothing to take back: no harm


def test_a_note_expires_after_five_minutes(clock: FakeClock, notes: Expectations) -> None:
    notes.expect_status(ID, "SUSPENDED")
    notes.expect_status(ID, "RESUMED")
    clock.now += FIVE_MINUTES - 1
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")
    clock.now += 2
    assert not notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1"), "used, then expired"
    assert not notes.consume_status(ID, "RESUMED", "RUNNING@t2"), "expired unused"


def test_expired_notes_are_dropped_when_the_notes_are_next_written(
    clock: FakeClock, store: HookedStateClient, notes: Expectations
) -> None:
    notes.expect_status(ID, "SUSPENDED")
    clock.now += FIVE_MINUTES + 1
    notes.expect_status(ID, "TERMINATED")
    assert set(notes.get(ID).statuses) == {"TERMINATED"}


def test_the_note_lifetime_is_note_seconds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, notes: Expectations
) -> None:
    monkeypatch.setattr(expectations, "NOTE_SECONDS", 10.0)
    notes.expect_status(ID, "SUSPENDED")
    clock.now += 11
    assert not notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1")


def test_raise_counts(store: HookedStateClient, notes: Expectations) -> None:
    assert notes.get(ID).raised_in("") == {}
    notes.expect_raise(ID, "approval_decision")
    notes.expect_raise(ID, "approval_decision")
    notes.expect_raise(ID, "cancel")
    assert _watcher(store).get(ID).raised_in("") == {"approval_decision": 2, "cancel": 1}
    notes.withdraw_raise(ID, "approval_decision")
    notes.withdraw_raise(ID, "cancel")
    notes.withdraw_raise(ID, "cancel")  # never below zero
    assert notes.get(ID).raised_in("") == {"approval_decision": 1, "cancel": 0}
    assert notes.get("order-2").raised_in("") == {}


def test_forget_removes_every_note(notes: Expectations) -> None:
    notes.expect_status(ID, "PURGED")
    notes.expect_raise(ID, "approval_decision")
    notes.forget(ID)
    assert notes.get(ID).raised_in("") == {}
    assert not notes.consume_status(ID, "PURGED", "purged:run")


def test_a_note_that_cannot_be_written_stops_the_handler(
    clock: FakeClock, store: HookedStateClient, notes: Expectations
) -> None:
    """The handler must not make a change the watch would take for someone else's."""
    store.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "store down")
    with pytest.raises(Transient):
        notes.expect_status(ID, "SUSPENDED")
    with pytest.raises(Transient):
        notes.expect_raise(ID, "approval_decision")


def test_taking_a_note_back_never_fails_the_handler(
    clock: FakeClock,
    store: HookedStateClient,
    notes: Expectations,
    caplog: pytest.LogCaptureFixture,
) -> None:
    notes.expect_status(ID, "SUSPENDED")
    notes.expect_raise(ID, "approval_decision")
    store.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "store down")
    notes.withdraw_status(ID, "SUSPENDED")
    notes.withdraw_raise(ID, "approval_decision")
    assert "could not take back a note" in caplog.text
    store.fail_save = None
    assert notes.consume_status(ID, "SUSPENDED", "SUSPENDED@t1"), "left to expire"


class CollidingStateClient(HookedStateClient):
    """The first write of each of ``parties`` threads waits until all of them have read: all
    but one of those writes carry a stale etag."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self._barrier = threading.Barrier(parties, timeout=10)
        self._waited: set[int] = set()

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
        me = threading.get_ident()
        if me not in self._waited:
            self._waited.add(me)
            self._barrier.wait()
        super().save_state(store_name, key, value, etag, options, state_metadata, metadata)


def test_concurrent_notes_lose_nothing() -> None:
    threads, rounds = 4, 10
    store = CollidingStateClient(threads)
    failures: list[BaseException] = []

    def handler(n: int) -> None:
        notes = Expectations(store, STORE, 3600)  # one per replica
        try:
            for _ in range(rounds):
                notes.expect_raise(ID, "approval_decision")
            notes.expect_status(ID, f"STATUS-{n}")
        except BaseException as error:
            failures.append(error)

    workers = [threading.Thread(target=handler, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    notes = Expectations(store, STORE, 3600).get(ID)
    assert notes.raised_in("") == {"approval_decision": threads * rounds}
    assert set(notes.statuses) == {f"STATUS-{n}" for n in range(threads)}
    written = store.items[KEY][1]
    attempts = sum(1 for save in store.saves if save.key == KEY)
    assert attempts - written >= threads - 1, "the writes did collide (and were retried)"


def test_a_raise_into_an_instance_that_has_not_run_yet_is_noted_for_every_run() -> None:
    """The sidecar shows a PENDING instance's creation time as zero; the watch sees the real
    one later: a raise noted under the zero time would be taken for somebody else's."""
    zero = datetime(1970, 1, 1)
    real = datetime(2026, 11, 30, 9, 0, 0, 123456)
    assert noted_run(zero) == noted_run(None) == ""
    assert noted_run(real) == run_of(real) == "2026-11-30T09:00:00.123456+00:00"
    notes = Notes(raised={noted_run(zero): {"approval_decision": 1}})
    assert notes.raised_in(run_of(real)) == {"approval_decision": 1}
