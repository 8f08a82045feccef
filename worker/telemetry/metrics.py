"""Prometheus metrics of the worker, with the official client (`prometheus_client`).

`PrometheusInstruments` implements the core's measurement points (`worker.instruments`) in a
registry of its own; `Metrics`, an add-on of the worker service, serves that registry over
HTTP (``WORKER_METRICS_HOST``:``WORKER_METRICS_PORT``, path ``/metrics``) and adds the watch's
instance counts when the watch runs. Names follow OpenTelemetry's messaging semantic
conventions where one exists (``messaging.process.duration``,
``messaging.client.consumed.messages``, the attribute ``messaging.destination.name`` for the
topic, ``error.type``), in Prometheus spelling (dots become underscores, the unit a suffix);
the rest is prefixed ``workflow_worker_``. docs/operate/metrics.md lists every series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from worker.instruments import Instruments, Outcome
from worker.service import Parts

log = logging.getLogger(__name__)

SYSTEM = "dapr"  # messaging.system: the worker consumes through Dapr pub/sub
OPERATION = "process"  # messaging.operation.name: messages are pushed to the app and processed
TOPIC = "messaging_destination_name"
# OpenTelemetry's advice for messaging.process.duration (seconds).
PROCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# A sidecar call ends by its deadline (WORKER_CALL_TIMEOUT_SECONDS, 10 s by default).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# What the watch knows: instance count per runtime status, and how many are stalled; None
# when this replica does not sweep (another one does, or the watch is off).
Inventory = Callable[[], tuple[Mapping[str, int], int] | None]


class PrometheusInstruments(Instruments):
    """The core's measurement points as Prometheus series in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        common = ("messaging_system", TOPIC, "messaging_operation_name")
        self._consumed = Counter(
            "messaging_client_consumed_messages",
            "Messages delivered to the worker by the sidecar (redeliveries too).",
            common,
            registry=registry,
        )
        self._duration = Histogram(
            "messaging_process_duration_seconds",
            "How long the worker took to handle a message, by topic; error_type: why it was "
            "not done (a rejection code, or a retry reason), empty when it was.",
            (*common, "error_type"),
            buckets=PROCESS_BUCKETS,
            registry=registry,
        )
        self._messages = Counter(
            "workflow_worker_messages",
            "What became of each message handled, by topic: outcome success, duplicate, "
            "parked, retry or drop; reason: a rejection code (drop) or retry reason (retry).",
            (TOPIC, "outcome", "reason"),
            registry=registry,
        )
        self._in_flight = Gauge(
            "workflow_worker_messages_in_flight",
            "Messages being handled right now, by topic.",
            (TOPIC,),
            registry=registry,
        )
        self._attempts = Counter(
            "workflow_worker_transient_attempts",
            "Handlings that failed and will be tried again (kind: transient, unexpected).",
            (TOPIC, "kind"),
            registry=registry,
        )
        self._calls = Histogram(
            "workflow_worker_sidecar_call_duration_seconds",
            "Calls to the sidecar by operation and result (ok, or the gRPC status code, "
            "timeout, not_found, rejected, transient, error).",
            ("operation", "result"),
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._events = Counter(
            "workflow_worker_status_events",
            "Status events by event type and result: published, failed (to publish), "
            "skipped (left out by WORKER_STATUS_EVENTS settings).",
            ("event_type", "result"),
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered (``labels`` validates and locks each time)."""
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def message_received(self, topic: str) -> None:
        self._child(self._consumed, SYSTEM, topic, OPERATION).inc()

    def in_flight(self, topic: str, delta: int) -> None:
        self._child(self._in_flight, topic).inc(delta)

    def message_handled(self, topic: str, outcome: str, reason: str, seconds: float) -> None:
        self._child(self._messages, topic, outcome, reason).inc()
        error = reason if outcome in (Outcome.DROP, Outcome.RETRY) else ""
        self._child(self._duration, SYSTEM, topic, OPERATION, error).observe(seconds)

    def transient_attempt(self, topic: str, kind: str) -> None:
        self._child(self._attempts, topic, kind).inc()

    def sidecar_call(self, operation: str, result: str, seconds: float) -> None:
        self._child(self._calls, operation, result).observe(seconds)

    def status_event(self, event_type: str, result: str) -> None:
        self._child(self._events, event_type, result).inc()


class InventoryCollector(Collector):
    """``workflow_worker_instances{status}`` and ``workflow_worker_instances_stalled``, read
    from the watch at each scrape (no sidecar call). Absent where the watch does not sweep."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def collect(self) -> Iterable[Metric]:
        try:
            known = self._inventory()
        except Exception:  # a scrape never fails because of the watch
            log.exception("metrics: reading the watch's inventory failed")
            return []
        if known is None:
            return []
        statuses, stalled = known
        instances = GaugeMetricFamily(
            "workflow_worker_instances",
            "Instances of this app-id by runtime status, as the sweeping replica's watch "
            "last saw them.",
            labels=["status"],
        )
        for status, count in sorted(statuses.items()):
            instances.add_metric([status], count)
        stuck = GaugeMetricFamily(
            "workflow_worker_instances_stalled",
            "Instances with a step in flight longer than WORKER_STALL_SECONDS.",
            value=stalled,
        )
        return [instances, stuck]


def new_registry(inventory: Inventory | None = None) -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector series, and the watch's
    instance counts when ``inventory`` is given."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    if inventory is not None:
        registry.register(InventoryCollector(inventory))
    return registry


class Metrics:
    """The metrics add-on: instruments for the core, an HTTP endpoint for Prometheus."""

    def __init__(self, host: str, port: int, inventory: Inventory | None = None) -> None:
        self.instruments = PrometheusInstruments(new_registry(inventory))
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self.url = ""

    def start(self, parts: Parts | None = None) -> None:
        """Serve the registry (``parts`` is not needed: the core reports to `instruments`)."""
        server, _ = start_http_server(self._port, self._host, self.instruments.registry)
        self._server = server
        port = int(server.server_address[1])
        host = self._host if ":" not in self._host else f"[{self._host}]"
        self.url = f"http://{host}:{port}/metrics"
        log.info("metrics: %s (Prometheus text format)", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
