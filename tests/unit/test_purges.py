"""Purges noted in the state store: read back as they were noted, kept for the records' TTL,
and a failure to note one never fails the purge."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from tests.unit.fakes import FakeRpcError, FakeStateClient
from worker.outcomes import Transient
from worker.purges import Purges

AT = datetime(2026, 12, 1, 9, 30, 0, 125000, tzinfo=UTC)


def test_a_noted_purge_is_read_back_with_its_time_and_a_ttl() -> None:
    state = FakeStateClient()
    purges = Purges(state, "records", ttl_seconds=604800)
    assert purges.purged_at("order-1") is None
    purges.note("order-1", AT)
    assert purges.purged_at("order-1") == AT
    assert purges.purged_at("order-2") is None
    [save] = state.saves
    assert (save.key, save.state_metadata) == ("wfw|purged|order-1", {"ttlInSeconds": "604800"})
    assert state.stores == {"records"}


def test_a_failed_note_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    state = FakeStateClient(fail_save=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    Purges(state, "records", ttl_seconds=60).note("order-1", AT)
    assert "could not note the purge of order-1" in caplog.text


def test_a_failed_read_is_transient() -> None:
    state = FakeStateClient(fail_get=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    with pytest.raises(Transient):
        Purges(state, "records", ttl_seconds=60).purged_at("order-1")


def test_an_unreadable_record_counts_as_no_purge_known() -> None:
    state = FakeStateClient()
    state.save_state("records", "wfw|purged|order-1", "yesterday")
    assert Purges(state, "records", ttl_seconds=60).purged_at("order-1") is None
