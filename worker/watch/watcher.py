"""Publishes every status change of every hosted instance that the worker did not make itself.

Two ways of learning of a change:
- **Hints** (at once): the sidecar hands every change to a running instance (suspend, resume,
  terminate, an event raised, a new run) to this app's workflow stream; `worker.watch.hook`
  passes the instance id here, and it is checked within a fraction of a second, on whichever
  replica got it.
- **The sweep** (every ``watch_sweep_seconds``, in one replica at a time, by lease): lists the
  app-id's instance ids and compares them with the inventory it keeps in the state store. An id
  that is gone was purged (also by daprd's retention policy, or while the worker was down); a
  new id is checked; an unfinished instance is re-checked every ``watch_recheck_seconds``, and
  one whose step has been in flight longer than ``stall_seconds`` is reported `stalled`.

A check compares the sidecar's state with what the feed last accounted for (`Seen`, in the
state store) and publishes the difference as events with ``observed: true`` and no
correlation_id, under ids derived from the change itself, so replicas that see the same change
publish it under one id. Changes the worker makes itself are noted before they are made
(`worker.expectations`) and left to the handler that reports them; completions and failures
are reported by the workflows themselves (`worker.hosting`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from worker.actions import observed
from worker.events import (
    SETS_STATUS,
    EventType,
    StatusEvent,
    TimelineEntry,
    as_utc,
    iso,
    now,
    real_time,
    stable_event_id,
)
from worker.expectations import Expectations, run_of
from worker.gateway import ACTIVE_STATUSES, LIST_PAGE, InstanceState, WorkflowGateway
from worker.outcomes import Missing, Rejected, Transient
from worker.publisher import Outbound, StatusPublisher
from worker.purges import Purges
from worker.watch.records import Records, Seen
from worker.watch.steps import pending_steps, raised_events

log = logging.getLogger(__name__)

_CONFLICT_TRIES = 5
_HINT_BATCH_SECONDS = 0.05
_LIST_PAGE = LIST_PAGE  # ids per listing call (see worker.gateway)
_BEHIND_TRIES = 200  # x the batch pause: ten seconds
# An instance in these statuses that shows a new creation time has continued as new; a new
# creation time after an end is a new life (a start with replace, a rerun in place), and after
# PENDING the sidecar's "not set" gave way to the real time.
_GOING_ON = frozenset({"RUNNING", "SUSPENDED"})


@dataclass(frozen=True)
class WatchSettings:
    sweep_seconds: float = 5.0
    recheck_seconds: float = 60.0
    lease_seconds: float = 20.0
    stall_seconds: float = 300.0


@dataclass
class _Hint:
    """What a work item told of one instance: when events were raised into it, and the status
    its last suspend, resume or terminate gave it."""

    raised: set[datetime] = field(default_factory=set)
    status: str | None = None


@dataclass
class _Hints:
    """Instance ids to check soon, with what their work items told."""

    pending: dict[str, _Hint] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Event = field(default_factory=threading.Event)

    def add(
        self,
        instance_id: str,
        raised: Iterable[datetime] = (),
        status: str | None = None,
        *,
        again: bool = False,
    ) -> None:
        """``again``: a hint put back to look once more; a newer hint's status wins over it."""
        with self.lock:
            hint = self.pending.setdefault(instance_id, _Hint())
            hint.raised.update(raised)
            if status is not None and not (again and hint.status is not None):
                hint.status = status
        self.ready.set()

    def take(self) -> dict[str, _Hint]:
        with self.lock:
            taken, self.pending = self.pending, {}
            self.ready.clear()
        return taken


class _HistoryBehind(Exception):
    """The sidecar has not stored what a hint announced yet (the events raised, the status a
    suspend, resume or terminate gives): look again shortly. daprd stores a work item's
    outcome after the app has answered it, so under load a check can come first."""


class Watcher:
    def __init__(
        self,
        gateway: WorkflowGateway,
        publisher: StatusPublisher,
        notes: Expectations,
        records: Records,
        settings: WatchSettings,
        purges: Purges | None = None,
    ) -> None:
        """``purges``: where to note each purge seen (`worker.purges`)."""
        self._gateway = gateway
        self._purges = purges
        self._publisher = publisher
        self._notes = notes
        self._records = records
        self._settings = settings
        self._hints = _Hints()
        self._known: dict[str, str] | None = None  # the inventory, while this replica sweeps
        self._known_lock = threading.Lock()
        self._known_dirty = False
        # One check of an instance at a time in this replica (hints and the sweep).
        self._locks = [threading.Lock() for _ in range(64)]
        self._checked_at: dict[str, float] = {}
        self._behind: dict[str, int] = {}  # hints whose history was not stored yet, by tries
        self._histories: dict[str, list[Any]] = {}  # read during the current check
        self._quiet: dict[str, datetime | None] = {}  # waiting on an event/timer, not a step
        self._stalled: set[str] = set()  # reported stalled, as this replica last saw them
        self.sweeps = 0
        self.last_sweep_seconds = 0.0

    # --- entry points -----------------------------------------------------------------------

    def started_by_worker(self, instance_id: str) -> None:
        """The worker started ``instance_id`` (its handler reports that): the sweeping replica
        takes it into its inventory at once, so that a purge before the next sweep (daprd's
        retention policy, say) is still noticed."""
        with self._known_lock:
            known = self._known
            if known is not None and instance_id not in known:
                known[instance_id] = "RUNNING"
                self._known_dirty = True
                # Its start is reported by its handler: the sweep looks again only when a
                # re-check is due (`published` may make even that unneeded).
                self._checked_at[instance_id] = time.monotonic()

    def published(self, outbound: Outbound) -> None:
        """The worker published ``outbound`` (its handlers, its workflows' reports, this
        watch): a sweeping replica takes the status it reports into its inventory, so an
        instance the worker saw finish needs no check of its own."""
        event = outbound.event
        if event.event not in SETS_STATUS or event.instance_id is None:
            return
        with self._known_lock:
            if event.instance_id in self._stalled:
                return  # reported stalled: the next check must see it move (`unstalled`)
            known = self._known
            before = known.get(event.instance_id) if known is not None else None
            if known is not None and event.status and before not in (None, event.status):
                known[event.instance_id] = event.status
                self._known_dirty = True

    def hint(
        self, instance_id: str, raised: Iterable[datetime] = (), status: str | None = None
    ) -> None:
        """Something happened to ``instance_id`` (events were raised at ``raised``; a
        suspend, resume or terminate gave it ``status``): check it soon."""
        self._hints.add(instance_id, raised, status)

    def inventory(self) -> tuple[dict[str, int], int] | None:
        """Instances per runtime status and how many of them are stalled, as this replica
        last saw them; None unless it sweeps (only the sweeping replica knows them all)."""
        with self._known_lock:
            if self._known is None:
                return None
            statuses: dict[str, int] = {}
            for status in self._known.values():
                statuses[status] = statuses.get(status, 0) + 1
            stalled = sum(1 for instance_id in self._stalled if instance_id in self._known)
        return statuses, stalled

    def run(self, stopping: threading.Event) -> None:
        """Check hinted instances and sweep, until ``stopping`` is set."""
        checker = threading.Thread(
            target=self._check_hints, args=(stopping,), name="watch-hints", daemon=True
        )
        checker.start()
        first = True
        while first or not stopping.wait(self._settings.sweep_seconds):
            first = False
            try:
                self.sweep()
            except Transient as error:
                log.warning(
                    "watch: sweep failed (%s); next one in %.0fs",
                    error,
                    self._settings.sweep_seconds,
                )
            except Exception:
                log.exception("watch: sweep failed")
        checker.join(timeout=5)
        with contextlib.suppress(Transient):
            self._records.release_lease()  # the next replica need not wait for it to expire

    def _check_hints(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            if not self._hints.ready.wait(0.5):
                continue
            time.sleep(_HINT_BATCH_SECONDS)  # let the sidecar settle the change it dispatched
            for instance_id, hint in self._hints.take().items():
                try:
                    self._check_hint(instance_id, hint)
                except Exception as error:
                    log.warning(
                        "watch: check of %s failed (%s); the sweep will retry", instance_id, error
                    )

    def _check_hint(self, instance_id: str, hint: _Hint) -> None:
        try:
            self.check(instance_id, raised=hint.raised or None, expect=hint.status)
        except _HistoryBehind:
            tries = self._behind[instance_id] = self._behind.get(instance_id, 0) + 1
            if tries < _BEHIND_TRIES:  # again, after the batch pause
                self._hints.add(instance_id, hint.raised, hint.status, again=True)
                return
            log.warning("watch: %s: the sidecar has not stored what it told yet", instance_id)
        else:
            self._behind.pop(instance_id, None)
            return
        self._behind.pop(instance_id, None)
        self.check(instance_id, raised=set())  # count what the history holds now

    # --- the sweep ----------------------------------------------------------------------------

    def sweep(self) -> None:
        """One pass over the app-id's instances, if this replica holds the lease."""
        if not self._records.hold_lease(self._settings.lease_seconds):
            if self._known is not None:
                log.info("watch: another replica sweeps now")
            with self._known_lock:
                self._known = None
            return
        began = time.monotonic()
        baseline = False
        if self._known is None:
            stored = self._records.known()
            baseline = stored is None  # the first sweep ever: note what exists, report nothing
            with self._known_lock:
                self._known = stored or {}
                self._known_dirty = baseline
            log.info(
                "watch: this replica sweeps (replica %s; %d instances known)",
                self._records.replica,
                len(stored or {}),
            )
        listed = list(self._gateway.instance_ids(page_size=_LIST_PAGE))
        present = set(listed)
        for instance_id, last in self._inventory().items():
            if instance_id not in present:  # gone: purged (by anyone, also while nobody watched)
                self.check(instance_id, last_known=last)
                self._forget(instance_id)
        lease_renewed = time.monotonic()
        inventory = self._inventory()
        for instance_id in listed:
            status = inventory.get(instance_id)
            due = status is None or (
                status in ACTIVE_STATUSES
                and time.monotonic() - self._checked_at.get(instance_id, -math.inf)
                >= self._settings.recheck_seconds
            )
            if not due:
                continue
            if time.monotonic() - lease_renewed > self._settings.lease_seconds / 3:
                if not self._records.hold_lease(self._settings.lease_seconds):
                    with self._known_lock:
                        self._known = None
                    return
                lease_renewed = time.monotonic()
            found = self.check(instance_id, report=not baseline, stalls=True)
            self._checked_at[instance_id] = time.monotonic()
            if found is None:
                self._forget(instance_id)
        with self._known_lock:
            changed = dict(self._known) if self._known_dirty and self._known is not None else None
            self._known_dirty = False
        if changed is not None:
            self._records.save_known(changed)
        self.sweeps += 1
        self.last_sweep_seconds = time.monotonic() - began
        log.debug(
            "watch: swept %d instances in %.3fs",
            len(listed),
            self.last_sweep_seconds,
        )

    def _inventory(self) -> dict[str, str]:
        with self._known_lock:
            return dict(self._known or {})

    def _forget(self, instance_id: str) -> None:
        with self._known_lock:
            if self._known is not None and self._known.pop(instance_id, None) is not None:
                self._known_dirty = True
        self._checked_at.pop(instance_id, None)

    # --- one instance ---------------------------------------------------------------------------

    def check(
        self,
        instance_id: str,
        *,
        raised: set[datetime] | None = None,
        report: bool = True,
        stalls: bool = False,
        last_known: str | None = None,
        expect: str | None = None,
    ) -> str | None:
        """Publish what changed on ``instance_id`` since the feed last accounted for it.

        ``raised``: when events were raised into it (read its history, which must hold
        them). ``expect``: the status a suspend, resume or terminate just gave it (the
        sidecar must show it, unless the instance has ended). ``stalls``: look for a step
        in flight for too long. ``report``: False notes the state without publishing (the
        first sweep ever). ``last_known``: its status in the sweep's inventory (it was there
        even if never looked at). Returns the instance's status, None when it is gone.
        """
        with self._locks[hash(instance_id) % len(self._locks)]:
            try:
                status = self._check(
                    instance_id,
                    raised=raised,
                    report=report,
                    stalls=stalls,
                    last_known=last_known,
                    expect=expect,
                )
            finally:
                self._histories.pop(instance_id, None)
        if status is None:
            self._forget(instance_id)  # reported gone: the sweep must not report it again
            return None
        with self._known_lock:  # a sweeping replica takes what it learns into its inventory
            known = self._known
            if known is not None and known.get(instance_id) != status:
                known[instance_id] = status
                self._known_dirty = True
        return status

    def _check(
        self,
        instance_id: str,
        *,
        raised: set[datetime] | None,
        report: bool,
        stalls: bool,
        last_known: str | None,
        expect: str | None,
    ) -> str | None:
        for _ in range(_CONFLICT_TRIES):
            state = self._gateway.get_state(instance_id, payloads=False)
            if (
                state is not None
                and expect not in (None, state.status)
                and state.status in ACTIVE_STATUSES  # unless it has ended since
            ):
                raise _HistoryBehind(instance_id)
            seen, etag = self._records.seen(instance_id)
            if state is None:
                self._gone(instance_id, seen, report, last_known)
                return None
            run = run_of(state.created_at)
            previous = replace(seen, raised=dict(seen.raised)) if seen is not None else None
            events: list[Outbound] = []
            if seen is not None and seen.run != run and seen.status in _GOING_ON:
                # continue-as-new: the next generation of the same life, a history of its own
                seen.run, seen.raised = run, {}
            elif seen is None or seen.run != run:
                seen, started = self._new_run(instance_id, state, run)
                events += started
            events += self._status_change(instance_id, state, seen)
            updated = iso(state.last_updated_at)
            if raised is None and stalls and seen.updated != updated:
                raised = set()  # the sweep: it moved since, so count its raised events too
            seen.updated = updated
            if raised is not None:
                events += self._raised(instance_id, state, seen, raised)
            if stalls or seen.stalled is not None:
                stalled_before = seen.stalled
                events += self._stall(instance_id, state, seen)
                if not report:  # a stall nobody was told of must not be "cleared" later
                    seen.stalled = stalled_before
            with self._known_lock:
                if seen.stalled is None:
                    self._stalled.discard(instance_id)
                else:
                    self._stalled.add(instance_id)
            if report and events:
                log.debug("watch: %s: %s", instance_id, [o.event.event.value for o in events])
                self._publisher.publish_all(events)
            if seen == previous and etag is not None:
                return state.status
            if self._records.save_seen(instance_id, seen, etag):
                return state.status
        raise Transient(f"watch: {instance_id} kept changing under concurrent checks")

    def _gone(
        self, instance_id: str, seen: Seen | None, report: bool, last_known: str | None
    ) -> None:
        if seen is None and last_known is None:
            return  # never accounted for: nothing to report
        run = seen.run if seen is not None else ""
        expected = self._notes.consume_status(instance_id, "PURGED", f"purged:{run}")
        at = now()
        if self._purges is not None and not expected:  # the worker noted its own purges
            self._purges.note(instance_id, at)
        if report and not expected:
            self._publisher.publish(
                self._observed(
                    instance_id,
                    EventType.PURGED,
                    run,
                    status="PURGED",
                    previous_status=seen.status if seen is not None else last_known,
                    at=at,
                    key=run,
                )
            )
        if seen is not None:
            self._records.forget_seen(instance_id)
        # The notes stay (they expire): a second watcher looking at the same purge right now
        # must still find the worker's note.
        self._checked_at.pop(instance_id, None)
        self._quiet.pop(instance_id, None)
        with self._known_lock:
            self._stalled.discard(instance_id)

    def _new_run(
        self, instance_id: str, state: InstanceState, run: str
    ) -> tuple[Seen, list[Outbound]]:
        """A run the feed has not accounted for: its start, unless the worker started it."""
        if state.status == "PENDING":
            # Not run yet: the sidecar shows neither its input (whose start it was) nor its
            # creation time. Its `started` is told once it runs (a new run then).
            return Seen(run=run, status="PENDING"), []
        full = self._gateway.get_state(instance_id, payloads=True) or state
        if full.origin is not None and full.origin.started(instance_id):
            # Its handler reported `started` (or `scheduled`, and the workflow `started`).
            return Seen(run=run, status="RUNNING"), []
        created = real_time(state.created_at)
        event = self._observed(
            instance_id,
            EventType.STARTED,
            run,
            status="RUNNING",
            workflow=state.workflow,
            created_at=created,
            at=created or now(),
            key=run,
        )
        return Seen(run=run, status="RUNNING"), [event]

    def _status_change(self, instance_id: str, state: InstanceState, seen: Seen) -> list[Outbound]:
        was, status = seen.status, state.status
        if status == was:
            return []
        seen.status = status
        # Only an action's change is told here: the workflow reports its own end
        # (worker.hosting), a start is told by `_new_run`.
        action = observed(was, status)
        if action is None:
            return []
        kind = action.event
        when = real_time(state.last_updated_at) or now()
        change = f"{status}@{iso(when)}"
        if self._notes.consume_status(instance_id, status, change):
            return []  # the worker made this change; its handler reports it
        return [
            self._observed(
                instance_id,
                kind,
                seen.run,
                status=status,
                previous_status=was,
                workflow=state.workflow,
                created_at=real_time(state.created_at),
                last_updated_at=state.last_updated_at,
                at=when,
                key=iso(when),
            )
        ]

    def _raised(
        self, instance_id: str, state: InstanceState, seen: Seen, hinted: set[datetime]
    ) -> list[Outbound]:
        """Events raised by others: what the history holds beyond the worker's and the
        feed's own count."""
        by_worker = self._notes.get(instance_id).raised_in(seen.run)
        out: list[Outbound] = []
        counts: dict[str, int] = {}
        history = raised_events(self._history(instance_id))
        stored = {e.started_at for e in history}
        if not hinted <= stored and state.status in ACTIVE_STATUSES:
            raise _HistoryBehind(instance_id)
        for raised in history:
            counts[raised.name or ""] = counts.get(raised.name or "", 0) + 1
            nth = counts[raised.name or ""]
            if nth <= by_worker.get(raised.name or "", 0) + seen.raised.get(raised.name or "", 0):
                continue
            seen.raised[raised.name or ""] = seen.raised.get(raised.name or "", 0) + 1
            out.append(
                self._observed(
                    instance_id,
                    EventType.EVENT_RAISED,
                    seen.run,
                    status=state.status,
                    workflow=state.workflow,
                    event_name=raised.name,
                    at=raised.started_at or now(),
                    key=f"{raised.name}#{nth}",
                )
            )
        return out

    def _stall(self, instance_id: str, state: InstanceState, seen: Seen) -> list[Outbound]:
        """`stalled` once for a step in flight longer than the threshold; `unstalled` once it
        has moved."""
        if state.status != "RUNNING" and seen.stalled is None:
            return []
        updated = state.last_updated_at
        idle = (now() - as_utc(updated)).total_seconds() if updated else 0.0
        if seen.stalled is None and (
            idle < self._settings.stall_seconds or self._quiet.get(instance_id, 0) == updated
        ):
            return []
        late = [
            step
            for step in pending_steps(self._history(instance_id))
            if step.started_at is not None
            and (now() - step.started_at).total_seconds() >= self._settings.stall_seconds
        ]
        if not late and seen.stalled is None:
            self._quiet[instance_id] = updated  # waiting on an event or a timer: fine
            return []
        key = _step_key(late[0]) if late and state.status == "RUNNING" else None
        if key == seen.stalled:
            return []
        out = []
        if seen.stalled is not None:
            out.append(
                self._observed(
                    instance_id,
                    EventType.UNSTALLED,
                    seen.run,
                    status=state.status,
                    workflow=state.workflow,
                    at=now(),
                    key=seen.stalled,
                )
            )
        if key is not None:
            out.append(
                self._observed(
                    instance_id,
                    EventType.STALLED,
                    seen.run,
                    status=state.status,
                    workflow=state.workflow,
                    step=late[0],
                    reason=f"{late[0].kind} {late[0].name!r} in flight since "
                    f"{iso(late[0].started_at)}",
                    at=now(),
                    key=key,
                )
            )
        seen.stalled = key
        return out

    def _history(self, instance_id: str) -> list[Any]:
        """The instance's history, read at most once per check."""
        cached = self._histories.get(instance_id)
        if cached is not None:
            return cached
        try:
            history = list(self._gateway.history(instance_id))
        except (Missing, Rejected):
            history = []
        self._histories[instance_id] = history
        return history

    def _observed(
        self,
        instance_id: str,
        kind: EventType,
        run: str,
        *,
        at: datetime,
        key: str,
        **fields: object,
    ) -> Outbound:
        event = StatusEvent.model_validate(
            {
                "event": kind,
                "instance_id": instance_id,
                "occurred_at": at,
                "observed": True,
                **fields,
            }
        )
        return Outbound(stable_event_id(instance_id, run, "observed", kind.value, key), event)


def _step_key(step: TimelineEntry) -> str:
    return f"{step.kind}:{step.name}:{iso(step.started_at)}"


def hinted(kinds: Iterable[str]) -> tuple[bool, bool]:
    """Whether new history events of these kinds call for a check, and whether one is an
    event raised. Steps finishing (the bulk of all work items) do not."""
    wanted = False
    raised = False
    for kind in kinds:
        if kind == "eventRaised":
            wanted = raised = True
        elif kind in (
            "executionStarted",
            "executionSuspended",
            "executionResumed",
            "executionTerminated",
        ):
            wanted = True
    return wanted, raised
