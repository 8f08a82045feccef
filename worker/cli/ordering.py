"""`wfctl watch` shows one instance's events in the order they happened.

The broker may hand wfctl an instance's events out of order: on Redis Streams a read that a
closed streaming subscription left blocked (daprd 1.18.2) takes the next event, which then
waits in the consumer group until it is reclaimed, a few seconds later, while the events after
it arrive. So an event whose predecessor has not been shown yet is held back, until that
predecessor arrives or `HOLD_SECONDS` have passed; each instance's events are then released in
`occurred_at` order, as docs/concepts/status-events.md tells consumers to order them.

An event waits for a predecessor when:
- its instance was created after the watch began and nothing of it was shown yet, and it is
  not a start (its `started` or `scheduled` is still to come);
- it says what the status was before it (`previous_status`) and the last event shown for its
  instance left another status (the change in between is still to come).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from worker.events import STARTS, StatusEvent, as_utc

T = TypeVar("T")

# Longer than the client profile's Redis read timeout plus its reclaim (components/client).
HOLD_SECONDS = 8.0
_REMEMBERED = 10_000  # instances whose last status is kept (the oldest are forgotten)


@dataclass
class _Held(Generic[T]):
    event: StatusEvent
    item: T
    since: float


@dataclass
class _Instance(Generic[T]):
    shown: bool = False
    status: str | None = None  # the status the last event shown left
    held: list[_Held[T]] = field(default_factory=list)


class InOrder(Generic[T]):
    """Events in, per instance in order out. ``item``: what to hand back with each event (the
    line to print)."""

    def __init__(
        self,
        since: datetime,
        hold_seconds: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._since = as_utc(since)
        self._hold = hold_seconds
        self._clock = clock
        self._instances: OrderedDict[str, _Instance[T]] = OrderedDict()

    def add(self, event: StatusEvent, item: T) -> list[T]:
        """Take ``event``; what can be shown now, in order."""
        if event.instance_id is None:
            return [item]  # a bulk summary: no instance to order by
        instance = self._instances.setdefault(event.instance_id, _Instance())
        self._instances.move_to_end(event.instance_id)
        instance.held.append(_Held(event, item, self._clock()))
        instance.held.sort(key=lambda held: held.event.occurred_at)
        released = self._release(instance)
        self._forget_oldest()
        return released

    def flush(self) -> list[T]:
        """Everything still held, each instance's in order (the watch ends)."""
        out: list[T] = []
        for instance in self._instances.values():
            out += [held.item for held in instance.held]
            instance.held.clear()
        return out

    def due(self) -> list[T]:
        """What has waited `HOLD_SECONDS` for a predecessor that never came: shown anyway."""
        out: list[T] = []
        for instance in self._instances.values():
            if instance.held:
                out += self._release(instance)
        return out

    @property
    def holding(self) -> bool:
        return any(instance.held for instance in self._instances.values())

    def _forget_oldest(self) -> None:
        while len(self._instances) > _REMEMBERED:
            oldest = next(iter(self._instances))
            if self._instances[oldest].held:
                break
            del self._instances[oldest]

    def _release(self, instance: _Instance[T]) -> list[T]:
        out: list[T] = []
        now = self._clock()
        while instance.held:
            first = instance.held[0]
            waited_enough = any(now - held.since >= self._hold for held in instance.held)
            if not waited_enough and self._waits(instance, first.event):
                break
            instance.held.pop(0)
            instance.shown = True
            instance.status = first.event.status or instance.status
            out.append(first.item)
        return out

    def _waits(self, instance: _Instance[T], event: StatusEvent) -> bool:
        """Whether an event that should come before ``event`` has not been shown yet."""
        if event.event in STARTS:
            return False
        if not instance.shown:
            created = event.created_at
            return created is not None and as_utc(created) >= self._since
        previous = event.previous_status
        return previous is not None and previous != instance.status
