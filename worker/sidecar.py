"""What the sidecar says about itself (its metadata endpoint), and what the worker makes of it:
whether the sidecar waits for the app's health before subscribing, where idempotency records
live, whether deliveries are accepted ahead (`worker.intake`), and whether status events may
go out in bulk."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from dapr.conf import settings as dapr_settings

from worker.config import Settings

log = logging.getLogger(__name__)

# A state store by this name, when the sidecar has one, holds the idempotency records (the
# embedded default's is in memory: see
# docs/how-to/profiles.md#where-the-records-live-and-accepting-ahead).
RECORDS_STORE = "idempotency"
# A pub/sub of this type hands a subscription one message at a time: accept ahead.
_ONE_AT_A_TIME = frozenset({"pubsub.in-memory"})
# Pub/subs that do not partition (no use for a per-event partitionKey, which a bulk publish
# cannot carry): status events may go out in bulk.
_UNPARTITIONED = frozenset({"pubsub.in-memory", "pubsub.redis"})


@dataclass(frozen=True)
class SidecarFacts:
    """``probe_interval``: seconds between the sidecar's app-health probes (None: it does not
    probe, its subscriptions are on from its start). ``components``: name -> type."""

    probe_interval: float | None = 5.0
    components: dict[str, str] = field(default_factory=dict)


def read_facts() -> SidecarFacts:
    """Ask the sidecar's metadata endpoint; assume a probing sidecar with no known
    components when it cannot be read."""
    url = f"http://{dapr_settings.DAPR_RUNTIME_HOST}:{dapr_settings.DAPR_HTTP_PORT}/v1.0/metadata"
    headers = (
        {"dapr-api-token": dapr_settings.DAPR_API_TOKEN} if dapr_settings.DAPR_API_TOKEN else {}
    )
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            metadata: dict[str, Any] = json.load(r)
    except (OSError, ValueError) as error:
        log.warning("could not read the sidecar's metadata (%s): assuming it probes", error)
        return SidecarFacts()
    components = {str(c.get("name")): str(c.get("type")) for c in metadata.get("components") or []}
    return SidecarFacts(_probe_interval(metadata), components)


def _probe_interval(metadata: dict[str, Any]) -> float | None:
    health = (metadata.get("appConnectionProperties") or {}).get("health")
    if not health:
        return None
    interval = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(health.get("healthProbeInterval", "")))
    return float(interval.group(1)) if interval else 5.0


def records_store(settings: Settings, facts: SidecarFacts) -> str:
    """The state store for idempotency records, parked messages and the intake's journal:
    ``settings.idempotency_store`` when set, else `RECORDS_STORE` when the sidecar has it,
    else ``settings.state_store``."""
    if settings.idempotency_store:
        return settings.idempotency_store
    return RECORDS_STORE if RECORDS_STORE in facts.components else settings.state_store


def accepts_ahead(settings: Settings, facts: SidecarFacts) -> bool:
    """``settings.accept_ahead`` when set, else whether the pub/sub delivers one at a time."""
    if settings.accept_ahead is not None:
        return settings.accept_ahead
    return facts.components.get(settings.pubsub_name, "") in _ONE_AT_A_TIME


def publishes_in_bulk(settings: Settings, facts: SidecarFacts) -> bool:
    """``settings.bulk_publish`` when set, else whether the pub/sub ignores partition keys."""
    if settings.bulk_publish is not None:
        return settings.bulk_publish
    return facts.components.get(settings.pubsub_name, "") in _UNPARTITIONED
