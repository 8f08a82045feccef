"""Writes that many threads make at once, sent to the sidecar as one call.

The first caller writes at once, alone; callers that come while a write is on its way queue,
and the next of them writes the whole queue in one call (up to ``max_items``). No caller waits
for a timer: a lone write costs what it did, a burst costs one call per round trip instead of
one per item. Each caller returns once its own item is written, or raises that write's error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Ticket(Generic[T]):
    item: T
    done: bool = False
    error: Exception | None = None


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None], max_items: int = 64) -> None:
        """``write``: sends a list of items in one call; raises when it fails (all failed)."""
        self._write = write
        self._max = max_items
        self._queue: list[_Ticket[T]] = []
        self._writing = False
        self._turn = threading.Condition()

    def submit(self, item: T) -> None:
        """Write ``item`` (with whatever else is waiting). Raises the write's error."""
        ticket = _Ticket(item)
        with self._turn:
            self._queue.append(ticket)
            while not ticket.done:
                if self._writing:  # someone else writes: ours may be in the next batch
                    self._turn.wait()
                    continue
                self._writing = True
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                self._turn.release()
                error: Exception | None = None
                try:
                    self._write([t.item for t in batch])
                except Exception as failure:
                    error = failure
                finally:
                    self._turn.acquire()
                for written in batch:
                    written.done, written.error = True, error
                self._writing = False
                self._turn.notify_all()
        if ticket.error is not None:
            raise ticket.error
