"""``python -m worker``: run the worker until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from worker.config import load_settings
from worker.service import WorkerService

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: Sequence[str] | None = None) -> int:
    # Take SIGTERM/SIGINT synchronously in the main thread (sigwait), blocked everywhere else:
    # no handler runs at an arbitrary point of some thread's work. Threads inherit this mask,
    # so it must come before any thread starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("worker")  # the SDK's loggers have handlers of their own
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    service = WorkerService(settings)
    try:
        service.start()
        received = signal.sigwait(_STOP_SIGNALS)
        root.info("received %s: shutting down", signal.Signals(received).name)
    finally:
        service.stop()
        _exit_soon_even_if_sdk_threads_linger()
    return 0


def _exit_soon_even_if_sdk_threads_linger(seconds: float = 10.0) -> None:
    """After a clean stop, the SDK's threads can hang on a wedged sidecar and keep the process
    alive; exit anyway after ``seconds`` (a normal exit ends this daemon timer first)."""

    def force() -> None:
        logging.getLogger("worker").warning("SDK threads still running: exiting anyway")
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
