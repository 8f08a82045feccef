"""What the worker makes of the sidecar's metadata: where records live, whether to accept
ahead, and whether the sidecar probes the app's health."""

from __future__ import annotations

import pytest

from tests.unit.test_service import _Metadata, sidecar_metadata  # noqa: F401 (fixture)
from worker.config import Settings
from worker.sidecar import (
    SidecarFacts,
    accepts_ahead,
    publishes_in_bulk,
    read_facts,
    records_store,
)

EMBEDDED = {
    "pubsub": "pubsub.in-memory",
    "statestore": "state.sqlite",
    "idempotency": "state.in-memory",
}
SHARED = {"pubsub": "pubsub.redis", "statestore": "state.redis"}


def test_the_components_and_the_probe_come_from_the_metadata(
    sidecar_metadata: type[_Metadata],  # noqa: F811
) -> None:
    sidecar_metadata.body = {
        "appConnectionProperties": {"health": {"healthProbeInterval": "3s"}},
        "components": [{"name": n, "type": t, "version": "v1"} for n, t in EMBEDDED.items()],
    }
    facts = read_facts()
    assert facts.components == EMBEDDED
    assert facts.probe_interval == 3.0


@pytest.mark.parametrize(
    ("components", "setting", "expected"),
    [
        (EMBEDDED, None, "idempotency"),  # the embedded default's in-memory store
        (SHARED, None, "statestore"),  # no such store: the durable one
        (EMBEDDED, "mine", "mine"),  # a setting wins
    ],
)
def test_where_the_records_live(
    components: dict[str, str], setting: str | None, expected: str
) -> None:
    settings = Settings(idempotency_store=setting)
    assert records_store(settings, SidecarFacts(components=components)) == expected


@pytest.mark.parametrize(
    ("components", "setting", "expected"),
    [
        (EMBEDDED, None, True),  # in-memory pub/sub: one message at a time
        (SHARED, None, False),  # Redis delivers concurrently: answer once handled
        (EMBEDDED, False, False),
        (SHARED, True, True),
        ({}, None, False),  # metadata not readable: the safe way
    ],
)
def test_whether_deliveries_are_accepted_ahead(
    components: dict[str, str], setting: bool | None, expected: bool
) -> None:
    settings = Settings(accept_ahead=setting)
    assert accepts_ahead(settings, SidecarFacts(components=components)) is expected


@pytest.mark.parametrize(
    ("pubsub_type", "setting", "expected"),
    [
        ("pubsub.in-memory", None, True),
        ("pubsub.redis", None, True),
        ("pubsub.kafka", None, False),  # partitions by the per-event key: one by one
        ("pubsub.redis", False, False),
    ],
)
def test_whether_status_events_go_out_in_bulk(
    pubsub_type: str, setting: bool | None, expected: bool
) -> None:
    facts = SidecarFacts(components={"pubsub": pubsub_type})
    assert publishes_in_bulk(Settings(bulk_publish=setting), facts) is expected
