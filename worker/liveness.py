"""Whether the worker still makes progress, or only a restart would heal it (``/livez``).

The failure this catches is the daprd 1.18.2 wedge (docs/concepts/guarantees.md): the
sidecar's workflow engine stops answering for some instances, and every try of a message
about one of them ends with DEADLINE_EXCEEDED, for as long as the sidecar runs. The pipeline
reports each try that failed that way, and each message it is done with; `Liveness` fails
once one message has failed that way at every try for ``window_seconds``. Other faults (the
sidecar unreachable, a broker or store down, overload) either pass or are not healed by a
restart, and a single slow call never counts: only the same message timing out again and again,
with no try of it succeeding in between, for minutes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from worker.instruments import call_result

# A message's tries count while it is retried: one not tried again for this long (dropped,
# moved to another replica, no longer delivered) is forgotten.
_STALE_SECONDS = 120.0
_REMEMBERED = 10_000
# What the wedge looks like from the worker: the call's deadline passed.
_DEADLINE_RESULTS = frozenset({"deadline_exceeded", "timeout"})


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


@dataclass
class _Streak:
    first: float
    last: float
    tries: int


class Liveness:
    """Failing streaks of messages' tries, per message; thread-safe."""

    def __init__(
        self,
        window_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        stale_seconds: float = _STALE_SECONDS,
    ) -> None:
        self.window = window_seconds
        self._clock = clock
        self._stale = min(stale_seconds, window_seconds)
        self._streaks: OrderedDict[str, _Streak] = OrderedDict()
        self._lock = threading.Lock()

    def failed(self, key: str, error: BaseException) -> None:
        """A try of message ``key`` failed with ``error``; only a deadline counts (the
        `Transient` the gateway raises carries the sidecar's error as its cause)."""
        cause = error.__cause__ if error.__cause__ is not None else error
        if call_result(cause) not in _DEADLINE_RESULTS:
            return  # another fault: neither counts nor ends a streak
        now = self._clock()
        with self._lock:
            streak = self._streaks.pop(key, None)
            if streak is None or now - streak.last > self._stale:
                streak = _Streak(now, now, 0)
            streak.last, streak.tries = now, streak.tries + 1
            self._streaks[key] = streak
            while len(self._streaks) > _REMEMBERED:
                self._streaks.popitem(last=False)

    def done(self, key: str) -> None:
        """The pipeline is done with message ``key`` (handled, rejected or given up)."""
        with self._lock:
            self._streaks.pop(key, None)

    def check(self) -> Verdict:
        """Failing when a message still being retried has timed out at every try for the
        window."""
        now = self._clock()
        with self._lock:
            for key, streak in list(self._streaks.items()):
                if now - streak.last > self._stale:
                    del self._streaks[key]
                    continue
                if streak.last - streak.first >= self.window:
                    return Verdict(
                        False,
                        f"{key}: every try for {streak.last - streak.first:.0f}s "
                        f"({streak.tries} tries) ended with the sidecar's deadline exceeded",
                    )
        return Verdict(True)
