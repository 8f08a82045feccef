"""The console's view of the instances: a read model in memory, so that a page view never asks
the sidecar about each instance.

It is fed by every status event this worker publishes (`StatusPublisher.listeners`: what its
handlers, its workflows' reports and its watch publish), and reconciled with the sidecar every
``refresh_seconds`` (`Reconciler`): the instance ids are listed (500 a call), a new id is read
once, an id gone is dropped (purged), and a share of the unfinished instances is re-read, for
changes published by other replicas. Its first reconciliation reads every instance once.

Each entry remembers how new its information is (``as_of``): an event that occurred before
what the entry already shows, or a read that began before it, changes nothing. A purge leaves a
tombstone so that a read begun before it cannot bring the instance back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from worker.events import NO_NEWS, EventType, as_utc, now, real_time
from worker.gateway import ACTIVE_STATUSES, TERMINAL_STATUSES, InstanceState
from worker.outcomes import Rejected, Transient
from worker.publisher import Outbound

log = logging.getLogger(__name__)

STATUSES = ("RUNNING", "PENDING", "SUSPENDED", "COMPLETED", "FAILED", "TERMINATED")
_RECENT_PER_INSTANCE = 50
_FEED_LENGTH = 2_000
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class Entry:
    """One instance as the console shows it in the list."""

    instance_id: str
    workflow: str | None
    status: str
    created_at: datetime | None
    updated_at: datetime | None  # when its status last changed, as far as the console knows
    as_of: datetime  # how new this information is
    stalled: bool = False
    last_event: str | None = None
    custom_status: Any = None
    checked: float = 0.0  # monotonic time of its last read from the sidecar

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class Filter:
    """Which instances a list shows; every field given must hold."""

    workflow: str | None = None
    statuses: frozenset[str] = frozenset()
    id_contains: str | None = None
    older_than: timedelta | None = None  # created longer ago than this
    newer_than: timedelta | None = None  # created within this
    stalled: bool = False

    def matches(self, entry: Entry, at: datetime, *, with_status: bool = True) -> bool:
        if self.workflow and entry.workflow != self.workflow:
            return False
        if with_status and self.statuses and entry.status not in self.statuses:
            return False
        if self.id_contains and self.id_contains.lower() not in entry.instance_id.lower():
            return False
        if self.stalled and not entry.stalled:
            return False
        if self.older_than is not None or self.newer_than is not None:
            if entry.created_at is None:
                return False
            age = at - entry.created_at
            if self.older_than is not None and age <= self.older_than:
                return False
            if self.newer_than is not None and age > self.newer_than:
                return False
        return True


SORT_KEYS: dict[str, Callable[[Entry], Any]] = {
    "created": lambda e: e.created_at or _EARLIEST,
    "updated": lambda e: e.updated_at or e.created_at or _EARLIEST,
    "id": lambda e: e.instance_id,
    "workflow": lambda e: (e.workflow or "", e.instance_id),
    "status": lambda e: (e.status, e.instance_id),
}


@dataclass
class Page:
    items: list[Entry]
    total: int  # matching the filter
    counts: dict[str, int]  # per status, among those matching every filter but the status
    page: int
    per_page: int
    pages: int
    instances: int  # in the model


@dataclass(frozen=True)
class FeedItem:
    """One status event the console saw, numbered in the order it saw them."""

    seq: int
    event_id: str
    data: dict[str, Any]


@dataclass
class LoadState:
    loaded: bool = False
    reading: int = 0
    read: int = 0
    last_error: str | None = None
    last_reconcile: datetime | None = None


class InstanceIndex:
    """The read model: entries by instance id, a feed of recent status events, and what the
    pages need to know whether they are stale."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._gone: dict[str, datetime] = {}  # tombstones: purged at
        self._recent: dict[str, deque[FeedItem]] = {}
        self._feed: deque[FeedItem] = deque(maxlen=_FEED_LENGTH)
        self._seq = 0
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self.version = 0  # bumped on every change to an entry or the feed
        self.load = LoadState()

    # --- feeding -------------------------------------------------------------------------

    def on_status(self, outbound: Outbound) -> None:
        """A status event was published (the `StatusPublisher` listener)."""
        event = outbound.event
        data = event.model_dump(mode="json", exclude_none=True)
        with self._lock:
            self._seq += 1
            item = FeedItem(self._seq, outbound.event_id, data)
            self._feed.append(item)
            if event.instance_id:
                recent = self._recent.setdefault(
                    event.instance_id, deque(maxlen=_RECENT_PER_INSTANCE)
                )
                recent.append(item)
                self._apply(outbound)
            self.version += 1
            self.changed.notify_all()

    def _apply(self, outbound: Outbound) -> None:
        event = outbound.event
        instance_id = event.instance_id
        assert instance_id is not None
        if event.event in NO_NEWS:
            return
        at = as_utc(event.occurred_at)
        entry = self._entries.get(instance_id)
        if event.event is EventType.PURGED:
            if entry is None or entry.as_of <= at:
                self._entries.pop(instance_id, None)
                self._gone[instance_id] = at
            return
        gone = self._gone.get(instance_id)
        if gone is not None and gone >= at:
            return  # news of an instance that was purged after it
        if entry is None:
            entry = Entry(
                instance_id,
                event.workflow,
                event.status or "RUNNING",
                real_time(event.created_at),
                at,
                at,
            )
            self._entries[instance_id] = entry
            self._gone.pop(instance_id, None)
        if event.event in (EventType.STALLED, EventType.UNSTALLED):
            entry.stalled = event.event is EventType.STALLED and not entry.finished
            return
        entry.workflow = entry.workflow or event.workflow
        entry.created_at = entry.created_at or real_time(event.created_at)
        if at < entry.as_of:
            return  # older than what it shows
        if event.status:
            entry.status = event.status
        if event.event is EventType.STARTED and event.created_at is not None:
            entry.created_at = real_time(event.created_at)  # a new run (rerun, replace)
        if event.custom_status is not None:
            entry.custom_status = event.custom_status
        entry.updated_at = at
        entry.as_of = at
        entry.last_event = event.event.value
        if entry.finished:
            entry.stalled = False

    def from_state(self, state: InstanceState, read_at: datetime) -> None:
        """What the sidecar said of an instance, in a read that began at ``read_at``."""
        with self._lock:
            entry = self._entries.get(state.instance_id)
            gone = self._gone.get(state.instance_id)
            if gone is not None and gone >= read_at:
                return
            if entry is not None and entry.as_of > read_at:
                entry.checked = time.monotonic()
                return
            fresh = Entry(
                state.instance_id,
                state.workflow or (entry.workflow if entry else None),
                state.status,
                real_time(state.created_at),
                real_time(state.last_updated_at) or (entry.updated_at if entry else None),
                read_at,
                stalled=bool(entry and entry.stalled and state.status in ACTIVE_STATUSES),
                last_event=entry.last_event if entry else None,
                custom_status=state.custom_status
                if state.custom_status is not None
                else (entry.custom_status if entry else None),
                checked=time.monotonic(),
            )
            if entry is not None and _same(entry, fresh):
                entry.checked = fresh.checked
                return
            self._entries[state.instance_id] = fresh
            self._gone.pop(state.instance_id, None)
            self.version += 1
            self.changed.notify_all()

    def drop_missing(self, listed: set[str], listed_at: datetime) -> int:
        """Forget the instances the sidecar no longer lists (purged), unless news of them came
        after the listing began; and tombstones of instances no longer listed."""
        with self._lock:
            gone = [i for i, e in self._entries.items() if i not in listed and e.as_of < listed_at]
            for instance_id in gone:
                del self._entries[instance_id]
                self._gone[instance_id] = listed_at
            for instance_id in [i for i, at in self._gone.items() if at < listed_at]:
                if instance_id not in listed:
                    del self._gone[instance_id]
            for instance_id in [i for i in self._recent if i not in self._entries]:
                if instance_id not in listed:
                    del self._recent[instance_id]
            if gone:
                self.version += 1
                self.changed.notify_all()
            return len(gone)

    # --- reading -------------------------------------------------------------------------

    def get(self, instance_id: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(instance_id)
            return replace(entry) if entry is not None else None

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def due(self, older_than_seconds: float, limit: int) -> list[str]:
        """Unfinished instances not read for ``older_than_seconds``, longest unread first."""
        cutoff = time.monotonic() - older_than_seconds
        with self._lock:
            stale = [e for e in self._entries.values() if e.active and e.checked < cutoff]
        stale.sort(key=lambda e: e.checked)
        return [e.instance_id for e in stale[:limit]]

    def select(self, flt: Filter) -> list[Entry]:
        """Every entry matching ``flt`` (copies)."""
        at = now()
        with self._lock:
            entries = list(self._entries.values())
        return [replace(e) for e in entries if flt.matches(e, at)]

    def query(
        self,
        flt: Filter,
        sort: str = "created",
        descending: bool = True,
        page: int = 1,
        per_page: int = 50,
    ) -> Page:
        at = now()
        with self._lock:
            entries = list(self._entries.values())
        counts = dict.fromkeys(STATUSES, 0)
        matching: list[Entry] = []
        for entry in entries:
            if not flt.matches(entry, at, with_status=False):
                continue
            counts[entry.status] = counts.get(entry.status, 0) + 1
            if not flt.statuses or entry.status in flt.statuses:
                matching.append(entry)
        key = SORT_KEYS.get(sort, SORT_KEYS["created"])
        matching.sort(key=key, reverse=descending)
        pages = max(1, -(-len(matching) // per_page))
        page = min(max(1, page), pages)
        start = (page - 1) * per_page
        items = [replace(e) for e in matching[start : start + per_page]]
        return Page(items, len(matching), counts, page, per_page, pages, len(entries))

    def recent(self, instance_id: str) -> list[FeedItem]:
        """The status events seen for ``instance_id``, oldest first by when they occurred."""
        with self._lock:
            items = list(self._recent.get(instance_id, ()))
        return sorted(items, key=lambda i: (str(i.data.get("occurred_at", "")), i.seq))

    def feed_since(self, seq: int) -> list[FeedItem]:
        with self._lock:
            return [item for item in self._feed if item.seq > seq]

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def wait_changed(self, version: int, timeout: float) -> int:
        """Block until the version moves past ``version`` (or ``timeout``); the version now."""
        with self._lock:
            self.changed.wait_for(lambda: self.version != version, timeout=timeout)
            return self.version


def _same(a: Entry, b: Entry) -> bool:
    return (a.status, a.workflow, a.created_at, a.stalled) == (
        b.status,
        b.workflow,
        b.created_at,
        b.stalled,
    )


class StateReader(Protocol):
    """What the reconciler needs of `WorkflowGateway`."""

    def get_state(self, instance_id: str, *, payloads: bool = True) -> InstanceState | None: ...

    def instance_ids(self, page_size: int = ...) -> Iterable[str]: ...


@dataclass
class Reconciler:
    """Keeps an `InstanceIndex` in step with the sidecar (see the module's docstring)."""

    index: InstanceIndex
    gateway: StateReader
    refresh_seconds: float = 15.0
    recheck_per_round: int = 200
    readers: int = 8
    _pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="console-read")

    def run(self, stopping: threading.Event, ready: threading.Event | None = None) -> None:
        while ready is not None and not ready.wait(0.5):
            if stopping.is_set():
                return
        while not stopping.is_set():
            try:
                self.reconcile(stopping)
            except Transient as error:
                self.index.load.last_error = str(error)
                log.warning("console: reconciling the instance list failed: %s", error)
            except Exception as error:
                self.index.load.last_error = str(error)
                log.exception("console: reconciling the instance list failed")
            stopping.wait(self.refresh_seconds)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def reconcile(self, stopping: threading.Event | None = None) -> None:
        load = self.index.load
        listed_at = now()
        listed = list(self.gateway.instance_ids())
        known = self.index.ids()
        new = [i for i in listed if i not in known]
        again = self.index.due(self.refresh_seconds * 4, self.recheck_per_round)
        todo = new + [i for i in again if i not in set(new)]
        load.reading, load.read = len(todo), 0
        for _ in self._pool.map(lambda i: self._read(i, stopping), todo):
            load.read += 1
        dropped = self.index.drop_missing(set(listed), listed_at)
        if dropped:
            log.info("console: %d instance(s) gone from the sidecar's list", dropped)
        load.loaded = True
        load.last_error = None
        load.last_reconcile = now()

    def _read(self, instance_id: str, stopping: threading.Event | None) -> None:
        if stopping is not None and stopping.is_set():
            return
        read_at = now()
        try:
            state = self.gateway.get_state(instance_id, payloads=False)
        except Rejected:
            return
        if state is not None:
            self.index.from_state(state, read_at)
