"""What a consumer of `workflow.status` may rely on, checked the way a consumer would.

- `schema_errors`: the event's data against the published JSON Schema
  (docs/schemas/workflow.status.schema.json), with format checking on (date-time must be
  RFC 3339, with an offset).
- `contract_errors`: those, and what this worker promises beyond the schema (which stays
  lenient, so that events of older workers still fit it): every `rejected` carries a `code`.
- `order_violations`: one instance's events, sorted by `occurred_at` as the README tells
  consumers to, must tell a possible life: started before events raised and before its end,
  suspended before resumed, finished before purged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "workflow.status.schema.json"

# Events about a request or a query, not a change of the instance.
_NOT_CHANGES = frozenset({"rejected", "state", "history", "stalled", "unstalled"})
_ENDS = frozenset({"completed", "failed", "terminated"})


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(data: Mapping[str, Any]) -> list[str]:
    """Every way ``data`` breaks the published status-event schema (formats checked)."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(event)'}: {error.message}"
        for error in _validator().iter_errors(dict(data))
    ]


def contract_errors(data: Mapping[str, Any]) -> list[str]:
    """`schema_errors`, and the promises of this worker's events that the schema leaves
    optional: a `rejected` event says why in one word (`code`, one of the schema's)."""
    problems = schema_errors(data)
    if data.get("event") == "rejected" and not data.get("code"):
        problems.append("code: a rejected event without its code")
    return problems


def order_violations(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Where one instance's events, in `occurred_at` order, tell an impossible life.

    Lenient only about what this feed may not show: an instance started elsewhere has no
    `started` (but one that has a `started` must show it first); a new run (replace) may
    follow an end or a purge.
    """
    changes = sorted(
        (e for e in events if e.get("event") not in _NOT_CHANGES),
        key=lambda e: datetime.fromisoformat(e["occurred_at"]),
    )
    problems: list[str] = []
    phase: str | None = None  # None: its start was not seen
    # An instance whose start the feed shows must show it before anything else happens to it.
    started_here = any(e["event"] in ("scheduled", "started") for e in changes)
    for e in changes:
        kind = e["event"]
        at = e["occurred_at"]
        bad = phase is None and started_here and kind not in ("scheduled", "started")
        if kind in ("scheduled", "started"):
            bad = phase not in (None, "ended", "purged") and not (
                kind == "started" and phase == "scheduled"
            )
            phase = kind
        elif kind in ("event_raised", "suspended"):
            bad = bad or phase in ("ended", "purged")
            if kind == "suspended":
                phase = "suspended"
        elif kind == "resumed":
            bad = bad or phase != "suspended"
            phase = "started"
        elif kind in _ENDS:
            bad = bad or phase in ("ended", "purged")
            phase = "ended"
        elif kind == "purged":
            bad = bad or phase not in (None, "ended")
            phase = "purged"
        if bad:
            sequence = [(c["event"], c["occurred_at"]) for c in changes]
            problems.append(f"{kind} at {at} is out of order in {sequence}")
    return problems
