"""The watch: every status change of every hosted instance on the status topic, whoever made
it (see `worker.watch.watcher`). An add-on of the worker service: the core never imports it."""

from __future__ import annotations

import logging
import threading

from worker.service import Parts
from worker.watch import hook
from worker.watch.records import Records
from worker.watch.watcher import Watcher, WatchSettings

log = logging.getLogger(__name__)


class Watch:
    """Plugs a `Watcher` into a starting `WorkerService`."""

    def __init__(self) -> None:
        self.watcher: Watcher | None = None
        self._thread: threading.Thread | None = None

    def start(self, parts: Parts) -> None:
        s = parts.settings
        assert parts.notes is not None, "the watch needs the handlers' notes (watch_enabled)"
        self.watcher = Watcher(
            parts.gateway,
            parts.publisher,
            parts.notes,
            Records(parts.state, s.state_store, s.idempotency_ttl_seconds),
            WatchSettings(
                sweep_seconds=s.watch_sweep_seconds,
                recheck_seconds=s.watch_recheck_seconds,
                lease_seconds=s.watch_lease_seconds,
                stall_seconds=s.stall_seconds,
            ),
            parts.purges,
        )
        hooked = hook.install(parts.runtime, self.watcher.hint, self.watcher.started_by_worker)
        parts.publisher.listeners.append(self.watcher.published)
        self._thread = threading.Thread(
            target=self.watcher.run, args=(parts.stopping,), name="watch", daemon=True
        )
        self._thread.start()
        log.info(
            "watch: every %.0fs (lease %.0fs), re-check every %.0fs, stalled after %.0fs%s",
            s.watch_sweep_seconds,
            s.watch_lease_seconds,
            s.watch_recheck_seconds,
            s.stall_seconds,
            "" if hooked else "; sweep only",
        )

    def inventory(self) -> tuple[dict[str, int], int] | None:
        """Instances per status and stalled, while this replica sweeps (for metrics)."""
        return self.watcher.inventory() if self.watcher is not None else None

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)
