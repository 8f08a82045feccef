"""What the watch keeps in the state store: per instance what the feed accounted for (written
with optimistic concurrency), the sweep's inventory, and the lease that lets one replica
sweep."""

from __future__ import annotations

import grpc
import pytest

from tests.unit.fakes import FakeClock, FakeRpcError, HookedStateClient
from worker.outcomes import Transient
from worker.watch import records as records_module
from worker.watch.records import Records, Seen

STORE = "statestore"
ID = "order-1"
LEASE = 20.0


@pytest.fixture
def store() -> HookedStateClient:
    return HookedStateClient()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(records_module, "time", clock)
    return clock


def _replica(store: HookedStateClient) -> Records:
    return Records(store, STORE, 3600)


# --- seen ----------------------------------------------------------------------------------------


def test_seen_round_trip(store: HookedStateClient) -> None:
    records = _replica(store)
    assert records.seen(ID) == (None, None)
    seen = Seen(
        run="2026-11-22T10:00:00+00:00",
        status="SUSPENDED",
        raised={"approval_decision": 2, "cancel": 1},
        stalled="activity:process_order:2026-11-22T10:00:01+00:00",
    )
    assert records.save_seen(ID, seen, None)
    found, etag = _replica(store).seen(ID)  # another replica reads what this one wrote
    assert found == seen
    assert etag is not None
    assert records.seen("order-2") == (None, None)


def test_save_seen_refuses_a_stale_etag(store: HookedStateClient) -> None:
    mine, theirs = _replica(store), _replica(store)
    assert mine.save_seen(ID, Seen(run="r", status="RUNNING"), None)
    _, etag = mine.seen(ID)
    assert theirs.save_seen(ID, Seen(run="r", status="SUSPENDED"), etag)
    assert not mine.save_seen(ID, Seen(run="r", status="TERMINATED"), etag)  # stale
    assert not mine.save_seen(ID, Seen(run="r", status="TERMINATED"), None)  # not the first
    found, fresh = mine.seen(ID)
    assert found == Seen(run="r", status="SUSPENDED")
    assert mine.save_seen(ID, Seen(run="r", status="TERMINATED"), fresh)


def test_two_replicas_writing_a_first_record_at_once_agree(store: HookedStateClient) -> None:
    first, second = _replica(store), _replica(store)
    others: list[bool] = []
    store.before_save[f"wfw|seen|{ID}"] = lambda: others.append(
        first.save_seen(ID, Seen(run="r", status="RUNNING"), None)
    )
    assert not second.save_seen(ID, Seen(run="r", status="SUSPENDED"), None)
    assert others == [True]
    assert second.seen(ID)[0] == Seen(run="r", status="RUNNING")


def test_a_store_fault_is_transient_not_a_conflict(store: HookedStateClient) -> None:
    records = _replica(store)
    store.fail_save = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with pytest.raises(Transient):
        records.save_seen(ID, Seen(run="r"), None)
    with pytest.raises(Transient):
        records.save_known({})
    store.fail_save = None
    store.fail_get = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with pytest.raises(Transient):
        records.seen(ID)
    with pytest.raises(Transient):
        records.known()
    with pytest.raises(Transient):
        records.hold_lease(LEASE)


def test_forget_seen(store: HookedStateClient) -> None:
    records = _replica(store)
    records.save_seen(ID, Seen(run="r", status="COMPLETED"), None)
    records.forget_seen(ID)
    assert records.seen(ID) == (None, None)
    assert records.save_seen(ID, Seen(run="r2", status="RUNNING"), None)  # a first write again


# --- the inventory -------------------------------------------------------------------------------


def test_the_inventory_is_none_before_the_first_save(store: HookedStateClient) -> None:
    records = _replica(store)
    assert records.known() is None
    records.save_known({})  # a first sweep that found nothing has taken stock all the same
    assert records.known() == {}
    records.save_known({ID: "RUNNING", "order-2": "COMPLETED"})
    assert _replica(store).known() == {ID: "RUNNING", "order-2": "COMPLETED"}


def test_the_inventory_never_expires_but_seen_records_do(store: HookedStateClient) -> None:
    """An inventory that expired would make the next sweep a first one (announcing nothing)."""
    records = _replica(store)
    records.save_known({ID: "RUNNING"})
    records.save_seen(ID, Seen(run="r"), None)
    ttl = {save.key: save.state_metadata for save in store.saves}
    assert ttl["wfw|watch|known"] in (None, {})
    assert ttl[f"wfw|seen|{ID}"] == {"ttlInSeconds": "3600"}


# --- the lease -----------------------------------------------------------------------------------


def test_the_lease_is_taken_and_renewed_by_its_holder(
    clock: FakeClock, store: HookedStateClient
) -> None:
    holder, other = _replica(store), _replica(store)
    assert holder.hold_lease(LEASE)
    clock.now += LEASE - 5
    assert holder.hold_lease(LEASE)  # renewed: valid until LEASE after now
    clock.now += LEASE - 5
    assert not other.hold_lease(LEASE), "renewed, so still valid"


def test_the_lease_is_refused_to_another_replica_while_valid(
    clock: FakeClock, store: HookedStateClient
) -> None:
    holder, other = _replica(store), _replica(store)
    assert holder.hold_lease(LEASE)
    assert not other.hold_lease(LEASE)
    clock.now += LEASE - 0.5
    assert not other.hold_lease(LEASE)
    assert holder.hold_lease(LEASE)


def test_an_expired_lease_is_taken_over(clock: FakeClock, store: HookedStateClient) -> None:
    holder, other = _replica(store), _replica(store)
    assert holder.hold_lease(LEASE)
    clock.now += LEASE + 0.5  # the holder died without giving it back
    assert other.hold_lease(LEASE)
    assert not holder.hold_lease(LEASE), "the old holder has lost it"
    assert other.hold_lease(LEASE)


def test_a_released_lease_is_free_at_once(clock: FakeClock, store: HookedStateClient) -> None:
    holder, other, third = _replica(store), _replica(store), _replica(store)
    assert holder.hold_lease(LEASE)
    other.release_lease()  # not its lease: nothing happens
    assert not third.hold_lease(LEASE)
    holder.release_lease()
    assert other.hold_lease(LEASE)
    assert not holder.hold_lease(LEASE)
    _replica(store).release_lease()  # another stranger: still the other's
    assert not third.hold_lease(LEASE)


def test_two_replicas_taking_a_free_lease_at_once_get_it_once(
    clock: FakeClock, store: HookedStateClient
) -> None:
    first, second = _replica(store), _replica(store)
    taken: list[bool] = []
    store.before_save["wfw|watch|lease"] = lambda: taken.append(first.hold_lease(LEASE))
    assert not second.hold_lease(LEASE)
    assert taken == [True]
    assert not store.before_save
    assert first.hold_lease(LEASE)
    assert not second.hold_lease(LEASE)


def test_two_replicas_taking_an_expired_lease_at_once_get_it_once(
    clock: FakeClock, store: HookedStateClient
) -> None:
    dead, first, second = _replica(store), _replica(store), _replica(store)
    assert dead.hold_lease(LEASE)
    clock.now += LEASE + 1
    taken: list[bool] = []
    store.before_save["wfw|watch|lease"] = lambda: taken.append(first.hold_lease(LEASE))
    assert not second.hold_lease(LEASE)
    assert taken == [True]
    assert not second.hold_lease(LEASE)
