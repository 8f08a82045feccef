"""The worker plus an in-process observer, for scripts/benchmark.py.

An in-memory pub/sub lives inside one sidecar: only the worker's own app can consume it, so
the benchmark's observer (status events, and a no-op topic for the sidecar's own pub/sub
round trip) runs in the worker's process. It appends one JSON line per received event to
the file named by BENCH_OBSERVATIONS.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from cloudevents.sdk.event import v1

from worker.__main__ import addons_for, instruments_of, serve, start_tracing
from worker.config import load_settings
from worker.service import WorkerService
from worker.telemetry import tracing

NOOP_TOPIC = "bench.noop"


def main() -> None:
    settings = load_settings([])
    logging.basicConfig(level=logging.WARNING)
    lock = threading.Lock()
    sink = open(os.environ["BENCH_OBSERVATIONS"], "a", buffering=1)  # noqa: SIM115

    def note(record: dict[str, Any]) -> None:
        line = json.dumps({"t": time.time(), **record})
        with lock:
            sink.write(line + "\n")

    def on_status(event: v1.Event) -> None:
        raw = event.Data()
        data = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        note(
            {
                "kind": "status",
                "event": data.get("event"),
                "cid": data.get("correlation_id"),
                "instance": data.get("instance_id"),
            }
        )

    def on_noop(event: v1.Event) -> None:
        note({"kind": "noop", "id": str(event.EventID())})

    addons = addons_for(settings)  # as `python -m worker` runs it (the watch included)
    service = WorkerService(
        settings,
        {
            (settings.pubsub_name, settings.status_topic): on_status,
            (settings.pubsub_name, NOOP_TOPIC): on_noop,
        },
        addons=addons,
        instruments=instruments_of(addons),  # metrics, when WORKER_METRICS_ENABLED
    )
    provider = start_tracing(settings)  # when OTEL_* asks (benchmark.py --tracing)
    try:
        serve(service, on_ready=lambda: print("worker ready", flush=True))
    finally:
        tracing.shutdown(provider)
        sink.close()


if __name__ == "__main__":
    main()
