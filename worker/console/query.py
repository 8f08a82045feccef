"""The list's query string (filters, sort, page), read the same way by the API and the pages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from pydantic import TypeAdapter, ValidationError

from worker.console.model import SORT_KEYS, STATUSES, Filter
from worker.messages import Duration

_DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)
_DAYS = re.compile(r"^(\d+(?:\.\d+)?)d$")
GROUPS = {
    "active": frozenset({"RUNNING", "PENDING", "SUSPENDED"}),
    "finished": frozenset({"COMPLETED", "FAILED", "TERMINATED"}),
}
MAX_PER_PAGE = 500


class BadQuery(ValueError):
    """A filter that cannot be read; the message says which and why."""


def duration(value: str, name: str) -> timedelta:
    """``"7d"``, Go style (``"720h"``, ``"1h30m"``) or ISO 8601 (``"P30D"``)."""
    text = value.strip()
    days = _DAYS.fullmatch(text)
    try:
        result = timedelta(days=float(days.group(1))) if days else _DURATION.validate_python(text)
    except ValidationError as error:
        raise BadQuery(
            f"{name}: {value!r} is not a duration (examples: 7d, 24h, 1h30m, P30D)"
        ) from error
    if result <= timedelta(0):
        raise BadQuery(f"{name}: must be positive")
    return result


@dataclass(frozen=True)
class ListQuery:
    workflow: str = ""
    status: str = ""
    q: str = ""
    older_than: str = ""
    newer_than: str = ""
    stalled: bool = False
    sort: str = "created"
    order: str = "desc"
    page: int = 1
    per_page: int = 50

    @staticmethod
    def parse(params: Any) -> ListQuery:
        """From a query string's parameters (a mapping of str to str)."""

        def text(name: str) -> str:
            return str(params.get(name) or "").strip()

        try:
            page = int(text("page") or 1)
            per_page = int(text("per_page") or 50)
        except ValueError as error:
            raise BadQuery("page and per_page must be whole numbers") from error
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise BadQuery(f"per_page must be between 1 and {MAX_PER_PAGE}")
        sort = text("sort") or "created"
        if sort not in SORT_KEYS:
            raise BadQuery(f"sort must be one of {', '.join(SORT_KEYS)}")
        order = text("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadQuery("order must be asc or desc")
        query = ListQuery(
            workflow=text("workflow"),
            status=text("status"),
            q=text("q"),
            older_than=text("older_than"),
            newer_than=text("newer_than"),
            stalled=text("stalled").lower() in ("1", "true", "on", "yes"),
            sort=sort,
            order=order,
            page=max(1, page),
            per_page=per_page,
        )
        query.filter()  # every filter must be readable
        return query

    def statuses(self) -> frozenset[str]:
        chosen: set[str] = set()
        for part in (p.strip() for p in self.status.split(",")):
            if not part:
                continue
            if part.lower() in GROUPS:
                chosen |= GROUPS[part.lower()]
            elif part.upper() in STATUSES:
                chosen.add(part.upper())
            else:
                raise BadQuery(
                    f"status: {part!r} is none of {', '.join(STATUSES)}, active, finished"
                )
        return frozenset(chosen)

    def filter(self) -> Filter:
        return Filter(
            workflow=self.workflow or None,
            statuses=self.statuses(),
            id_contains=self.q or None,
            older_than=duration(self.older_than, "older_than") if self.older_than else None,
            newer_than=duration(self.newer_than, "newer_than") if self.newer_than else None,
            stalled=self.stalled,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-default parameters, with ``changes``: for links."""
        values = {
            "workflow": self.workflow,
            "status": self.status,
            "q": self.q,
            "older_than": self.older_than,
            "newer_than": self.newer_than,
            "stalled": "1" if self.stalled else "",
            "sort": self.sort if self.sort != "created" else "",
            "order": self.order if self.order != "desc" else "",
            "page": str(self.page) if self.page != 1 else "",
            "per_page": str(self.per_page) if self.per_page != 50 else "",
        }
        for name, value in changes.items():
            values[name] = "" if value is None else str(value)
        return {k: v for k, v in values.items() if v}

    def url(self, path: str = "/", **changes: Any) -> str:
        params = self.params(**changes)
        return f"{path}?{urlencode(params)}" if params else path

    def sort_url(self, column: str) -> str:
        order = "asc" if self.sort == column and self.order == "desc" else "desc"
        return self.url(sort=column, order=order, page=None)
