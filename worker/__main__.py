"""``python -m worker``: run the worker until SIGTERM or SIGINT."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker.config import Settings, load_settings
from worker.instruments import NO_INSTRUMENTS, Instruments
from worker.service import Addon, WorkerService
from worker.telemetry import logs, tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("worker")

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack, to stderr
    logs.configure(settings.log_format, settings.log_level)
    provider = start_tracing(settings)
    try:
        addons = addons_for(settings)
        serve(WorkerService(settings, addons=addons, instruments=instruments_of(addons)))
    finally:
        tracing.shutdown(provider)  # the last spans out
    return 0


def start_tracing(settings: Settings) -> TracerProvider | None:
    """OpenTelemetry's SDK when the OTEL_* variables configure it (None: tracing off; see
    `worker.telemetry.tracing`); shut it down with `tracing.shutdown` after the service.
    Blocks the stop signals first, as `serve` does: the exporter's thread inherits that."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    return tracing.configure(settings.app_id, os.environ)


def addons_for(settings: Settings) -> list[Addon]:
    """The surfaces built on the core that these settings turn on."""
    addons: list[Addon] = []
    watch = None
    if settings.watch_enabled:
        from worker.watch import Watch

        watch = Watch()
        addons.append(watch)
    if settings.console_enabled:
        from worker.console import Console

        addons.append(Console())
    if settings.health_enabled:
        from worker.health import Health

        addons.append(Health(settings.health_host, settings.health_port))
    if settings.metrics_enabled:
        from worker.telemetry.metrics import Metrics

        inventory = watch.inventory if watch is not None else None
        addons.append(Metrics(settings.metrics_host, settings.metrics_port, inventory))
    return addons


def instruments_of(addons: Sequence[Addon]) -> Instruments:
    """What measures the core: an add-on's instruments (the metrics'), else nothing."""
    for addon in addons:
        instruments = getattr(addon, "instruments", None)
        if isinstance(instruments, Instruments):
            return instruments
    return NO_INSTRUMENTS


def serve(service: WorkerService, on_ready: Callable[[], None] | None = None) -> None:
    """Start ``service``, run until SIGTERM or SIGINT, then stop it.

    The signals are taken synchronously in this (main) thread with sigwait, and blocked in
    every other thread: no handler runs at an arbitrary point of some thread's work. Threads
    inherit the mask, so call this before anything starts a thread.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        service.start()
        if on_ready is not None:
            on_ready()
        received = signal.sigwait(_STOP_SIGNALS)
        log.info("received %s: shutting down", signal.Signals(received).name)
    finally:
        service.stop()
        _exit_soon_even_if_sdk_threads_linger()


def _exit_soon_even_if_sdk_threads_linger(seconds: float = 10.0) -> None:
    """After a clean stop, the SDK's threads can hang on a wedged sidecar and keep the process
    alive; exit anyway after ``seconds`` (a normal exit ends this daemon timer first)."""

    def force() -> None:
        log.warning("SDK threads still running: exiting anyway")
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
