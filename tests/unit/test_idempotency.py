"""The claim/done records that make a redelivered message have no second effect."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import pytest
from dapr.clients.grpc._state import Concurrency

from tests.unit.fakes import FakeRpcError, FakeStateClient
from worker.events import EventType, StatusEvent
from worker.idempotency import Begin, IdempotencyStore, message_key
from worker.outcomes import Transient
from worker.publisher import Outbound

_LEASE = 60.0
_TTL = 3600


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("worker.idempotency.time.time", fake)
    return fake


@pytest.fixture
def client() -> FakeStateClient:
    return FakeStateClient()


@pytest.fixture
def store(client: FakeStateClient, clock: Clock) -> IdempotencyStore:
    return IdempotencyStore(client, "statestore", ttl_seconds=_TTL, lease_seconds=_LEASE)


def _events() -> list[Outbound]:
    when = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    return [
        Outbound(
            "id-started",
            StatusEvent(
                event=EventType.STARTED,
                instance_id="order-1",
                workflow="approval_workflow",
                status="RUNNING",
                occurred_at=when,
                correlation_id="msg-1",
            ),
        ),
        Outbound(
            "id-purged",
            StatusEvent(event=EventType.PURGED, occurred_at=when, count=2, output={"x": False}),
        ),
    ]


def test_message_key_is_stable_and_distinguishes_parts() -> None:
    key = message_key("workflow.start", "src", "m1")
    assert key == message_key("workflow.start", "src", "m1")
    assert len(key) == 40
    others = {
        message_key("workflow.control", "src", "m1"),
        message_key("workflow.start", "other", "m1"),
        message_key("workflow.start", "src", "m2"),
    }
    assert key not in others
    assert len(others) == 3


def test_first_begin_is_new(store: IdempotencyStore, client: FakeStateClient) -> None:
    claim = store.begin("k1")
    assert claim.outcome is Begin.NEW
    assert claim.key == "k1"
    assert claim.events == []
    [save] = client.saves
    assert save.key == "wfw|claim|k1"
    assert save.etag is None
    assert save.options is not None
    assert save.options.concurrency == Concurrency.first_write
    assert client.stores == {"statestore"}


def test_second_begin_while_claim_fresh_is_busy(store: IdempotencyStore, clock: Clock) -> None:
    store.begin("k1")
    clock.now += _LEASE - 1
    claim = store.begin("k1")
    assert claim.outcome is Begin.BUSY
    assert claim.previous_claimed_at == pytest.approx(clock.now - (_LEASE - 1))


def test_keys_are_independent(store: IdempotencyStore) -> None:
    assert store.begin("k1").outcome is Begin.NEW
    assert store.begin("k2").outcome is Begin.NEW


def test_begin_after_finish_is_done_with_same_events(store: IdempotencyStore, clock: Clock) -> None:
    events = _events()
    store.begin("k1")
    store.finish("k1", events)
    clock.now += 10 * _LEASE  # even long after the lease: done wins over taking over
    claim = store.begin("k1")
    assert claim.outcome is Begin.DONE
    assert [e.event_id for e in claim.events] == ["id-started", "id-purged"]
    assert [e.event.event for e in claim.events] == [EventType.STARTED, EventType.PURGED]
    assert claim.events == events


def test_stale_claim_is_taken_over(
    store: IdempotencyStore, client: FakeStateClient, clock: Clock
) -> None:
    store.begin("k1")
    first_claimed = clock.now
    clock.now += _LEASE + 1
    claim = store.begin("k1")
    assert claim.outcome is Begin.TAKEN_OVER
    assert claim.previous_claimed_at == pytest.approx(first_claimed)
    # The take-over wrote the claim with the etag it read, refreshing claimed_at.
    takeover = client.saves[-1]
    assert takeover.key == "wfw|claim|k1"
    assert takeover.etag == "1"
    raw, _ = client.items["wfw|claim|k1"]
    assert json.loads(raw)["claimed_at"] == pytest.approx(clock.now)
    # ...so a third delivery right after sees a fresh claim again.
    assert store.begin("k1").outcome is Begin.BUSY


def _another_delivery_takes_the_claim_after_each_read(client: FakeStateClient) -> None:
    """Between our read of a claim and our write, another delivery takes it over."""
    original_get = client.get_state

    def get_then_race(store_name: str, key: str) -> object:
        item = original_get(store_name, key)
        if "claim" in key:
            raw, version = client.items[key]
            client.items[key] = (raw, version + 1)
        return item

    client.get_state = get_then_race  # type: ignore[assignment,method-assign]


def test_takeover_lost_to_a_concurrent_writer_is_busy(
    store: IdempotencyStore, client: FakeStateClient, clock: Clock
) -> None:
    store.begin("k1")
    clock.now += _LEASE + 1
    _another_delivery_takes_the_claim_after_each_read(client)
    assert store.begin("k1").outcome is Begin.BUSY


def test_release_after_nothing_was_done_lets_the_next_begin_be_new(
    store: IdempotencyStore, client: FakeStateClient
) -> None:
    store.begin("k1")
    store.release("k1", acted=False)
    assert "wfw|claim|k1" not in client.items
    assert store.begin("k1").outcome is Begin.NEW


def test_release_after_a_failure_that_may_have_acted_makes_the_next_begin_a_take_over(
    store: IdempotencyStore, client: FakeStateClient, clock: Clock
) -> None:
    """A start that timed out may have been made: the next delivery must not be told NEW
    (no delivery acted), but may go ahead at once, carefully."""
    store.begin("k1")
    store.release("k1")  # acted=True is the default
    raw, _ = client.items["wfw|claim|k1"]
    assert json.loads(raw)["released"] is True
    assert client.saves[-1].state_metadata == {"ttlInSeconds": str(_TTL)}
    clock.now += 1  # well within the lease: a released claim does not wait for it
    claim = store.begin("k1")
    assert claim.outcome is Begin.TAKEN_OVER
    assert claim.previous_claimed_at is None
    # Taken over again, it is held: a concurrent delivery now finds it busy.
    assert store.begin("k1").outcome is Begin.BUSY
    assert store.handled("k1") is False


def test_a_released_claim_is_taken_over_by_one_delivery_only(
    store: IdempotencyStore, client: FakeStateClient
) -> None:
    store.begin("k1")
    store.release("k1")
    _another_delivery_takes_the_claim_after_each_read(client)
    assert store.begin("k1").outcome is Begin.BUSY


@pytest.mark.parametrize("acted", [True, False])
def test_release_failure_is_swallowed(
    store: IdempotencyStore,
    client: FakeStateClient,
    caplog: pytest.LogCaptureFixture,
    acted: bool,
) -> None:
    store.begin("k1")

    def failing(*_: object, **__: object) -> None:
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")

    client.delete_state = failing  # type: ignore[method-assign]
    client.save_state = failing  # type: ignore[method-assign]
    store.release("k1", acted=acted)  # no exception: the claim expires by lease
    assert "could not release claim" in caplog.text


def test_state_store_error_on_get_is_transient(
    store: IdempotencyStore, client: FakeStateClient
) -> None:
    store.begin("k1")
    client.fail_get = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "redis down")
    with pytest.raises(Transient) as info:
        store.begin("k1")
    assert "redis down" in str(info.value)


def test_claim_write_failing_without_any_record_is_transient(
    store: IdempotencyStore, client: FakeStateClient
) -> None:
    client.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "redis down")
    with pytest.raises(Transient) as info:
        store.begin("k1")
    assert "could not claim" in str(info.value)


def test_finish_failure_is_transient(store: IdempotencyStore, client: FakeStateClient) -> None:
    store.begin("k1")
    client.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "redis down")
    with pytest.raises(Transient):
        store.finish("k1", _events())


def test_ttl_metadata_is_passed_on_every_save(
    store: IdempotencyStore, client: FakeStateClient, clock: Clock
) -> None:
    store.begin("k1")
    clock.now += _LEASE + 1
    store.begin("k1")  # take-over: a failed insert, then a write with the etag
    store.finish("k1", _events())
    store.begin("k1")  # conflicting claim attempt
    assert [s.key.split("|")[1] for s in client.saves] == [
        "claim",
        "claim",
        "claim",
        "done",
        "claim",
    ]
    assert all(s.state_metadata == {"ttlInSeconds": str(_TTL)} for s in client.saves)


def test_finish_writes_done_record_without_first_write(
    store: IdempotencyStore, client: FakeStateClient
) -> None:
    store.begin("k1")
    store.finish("k1", [])
    store.finish("k1", _events())  # a second finish overwrites instead of failing
    done = client.saves[-1]
    assert done.key == "wfw|done|k1"
    assert done.options is None or done.options.concurrency != Concurrency.first_write
    assert len(json.loads(client.items["wfw|done|k1"][0])["events"]) == 2


def test_handled_tells_unknown_in_progress_unpublished_and_done(store: IdempotencyStore) -> None:
    assert store.handled("m") is None  # never seen (or forgotten after the TTL)
    store.begin("m")
    assert store.handled("m") is False  # claimed, being handled
    store.finish("m", _events(), published=False)
    assert store.handled("m") is False  # recorded, but its events are not out yet
    store.finish("m", _events())
    assert store.handled("m") is True


def test_a_record_whose_events_failed_to_publish_is_done_but_unpublished(
    store: IdempotencyStore,
) -> None:
    store.begin("m")
    store.finish("m", _events(), published=False)
    again = store.begin("m")
    assert again.outcome is Begin.DONE
    assert again.published is False
    assert [e.event_id for e in again.events] == [e.event_id for e in _events()]
