"""Starts and stops the worker's parts in the right order.

Start: clients -> gRPC app listening (and healthy, so that the sidecar turns its subscriptions
on at its first probe) -> WorkflowRuntime (it needs the sidecar, and the sidecar waits for the
app's port) -> "worker ready" once the sidecar delivers: a message published after that line is
never lost. Stop (SIGTERM/SIGINT): stop taking messages, let in-flight ones finish (bounded),
stop the runtime, stop the app.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dapr.clients import DaprClient
from dapr.clients.grpc._response import TopicEventResponseStatus
from dapr.ext.grpc import App
from dapr.ext.workflow import WorkflowRuntime

from worker import traces
from worker.app import Subscriber, build_app
from worker.config import Settings
from worker.expectations import Expectations
from worker.gateway import WorkflowGateway
from worker.handlers.approval import ApprovalHandler
from worker.handlers.control import ControlHandler
from worker.handlers.inbound import Inbound
from worker.handlers.pipeline import Pipeline, TopicHandler
from worker.handlers.start import StartHandler
from worker.hosting import build_runtime
from worker.idempotency import IdempotencyStore, message_key
from worker.instruments import NO_INSTRUMENTS, Instruments, MeasuredClient
from worker.intake import Intake
from worker.liveness import Liveness
from worker.outcomes import retry_until_done
from worker.parking import ParkingLot
from worker.publisher import StatusPublisher
from worker.purges import Purges
from worker.sidecar import (
    SidecarFacts,
    accepts_ahead,
    publishes_in_bulk,
    read_facts,
    records_store,
)
from worker.topics import APPROVAL, CONTROL, START

log = logging.getLogger(__name__)


def _wait_for_port(port: int, deadline_seconds: float) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the gRPC app did not listen on port {port}")


@dataclass(frozen=True)
class Parts:
    """What an add-on (the watch, ...) may use of a starting service."""

    settings: Settings
    gateway: WorkflowGateway
    publisher: StatusPublisher
    state: DaprClient
    runtime: WorkflowRuntime
    notes: Expectations | None
    stopping: threading.Event
    # For surfaces that act as one more client (the console): the topic handlers messages go
    # through, the workflows a start may name, and set once the workflow runtime is connected.
    handlers: Mapping[str, TopicHandler] = field(default_factory=dict)
    workflows: Sequence[str] = ()
    acting: threading.Event | None = None
    records_store: str = "statestore"  # where idempotency records live (worker.sidecar)
    purges: Purges | None = None  # where purges are noted (worker.purges)
    # For health probes: set while the worker takes messages (subscribed, workflow runtime
    # connected; cleared when it stops), and whether it still makes progress.
    ready: threading.Event | None = None
    liveness: Liveness | None = None


class Addon(Protocol):
    """A surface built on the core. ``start`` runs before the workflow runtime connects."""

    def start(self, parts: Parts) -> None: ...

    def stop(self) -> None: ...


# After the sidecar's first healthy probe it starts its subscriptions in the background.
_SUBSCRIBE_SETTLE_SECONDS = 0.3


class WorkerService:
    def __init__(
        self,
        settings: Settings,
        extra_subscriptions: Mapping[tuple[str, str], Subscriber] | None = None,
        addons: Sequence[Addon] = (),
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        """``instruments``: where the core reports what it measures (`worker.instruments`)."""
        self.settings = settings
        self.instruments = instruments
        self._addons = list(addons)
        self._extra_subscriptions = extra_subscriptions
        self._ready = threading.Event()
        self.liveness = Liveness(settings.liveness_window_seconds)
        self._acting = threading.Event()  # the workflow runtime is connected
        self._probed = threading.Event()  # the sidecar's health probe was answered healthy
        self._stopped = threading.Event()
        self._parking_thread: threading.Thread | None = None
        self._app: App | None = None
        self._runtime: WorkflowRuntime | None = None
        self._server_thread: threading.Thread | None = None
        self._dapr: DaprClient | None = None
        self._gateway: WorkflowGateway | None = None
        self._pipeline: Pipeline | None = None
        self._intake: Intake | None = None
        self._facts: SidecarFacts | None = None

    def start(self) -> None:
        s = self.settings
        measure = self.instruments
        self._gateway = WorkflowGateway(
            s.call_timeout_seconds, sdk_log_level=s.sdk_log_level, instruments=measure
        )
        # Waits (bounded) for the sidecar to be up. Inside a message's trace, each state and
        # publish call is a CLIENT span whose traceparent the sidecar's own spans continue.
        self._dapr = DaprClient(interceptors=[traces.Propagation(spans=True)])
        # State and publish calls timed too, when something measures (no wrapper otherwise).
        client = self._dapr if measure is NO_INSTRUMENTS else MeasuredClient(self._dapr, measure)
        self._facts = facts = read_facts()
        publisher = StatusPublisher(client, s, measure, bulk=publishes_in_bulk(s, facts))
        records = records_store(s, facts)
        store = IdempotencyStore(client, records, s.idempotency_ttl_seconds, s.claim_lease_seconds)

        def start_handled(source: str, message_id: str) -> bool | None:
            return store.handled(message_key(START.address(s), source, message_id))

        runtime, registry = build_runtime(
            publisher, s.workflow_modules, s.sdk_log_level, start_handled
        )
        allowed = registry.workflow_names
        if s.allowed_workflows is not None:
            allowed = s.allowed_workflows
        parking = ParkingLot(client, records, s.idempotency_ttl_seconds)
        purges = Purges(client, records, s.idempotency_ttl_seconds)
        self._pipeline = Pipeline(
            store,
            publisher,
            s.max_transient_attempts,
            s.max_message_bytes,
            parking=parking,
            grace_seconds=s.unknown_instance_grace_seconds,
            purges=purges,
            ready=self._acting,
            instruments=measure,
            liveness=self.liveness,
        )
        notes = (
            Expectations(client, s.state_store, s.idempotency_ttl_seconds)
            if s.watch_enabled
            else None
        )
        handlers: dict[str, TopicHandler] = {
            START.address(s): StartHandler(self._gateway, allowed, registry.inputs),
            APPROVAL.address(s): ApprovalHandler(self._gateway, notes),
            CONTROL.address(s): ControlHandler(self._gateway, notes, purges),
        }
        accept = None
        if accepts_ahead(s, facts):
            self._intake = Intake(
                self._pipeline,
                handlers,
                client,
                records,
                f"wfw|intake|{s.app_id}",
                publisher,
                store.handled,
                ttl_seconds=s.idempotency_ttl_seconds,
                lanes=s.max_concurrency,
                slots=4 * s.max_concurrency,
                ready=self._acting,
                stopping=self._stopped,
                instruments=measure,
            )
            self._intake.start()  # runs what a stopped process accepted and did not finish
            accept = self._intake.accept
        log.info(
            "idempotency records in state store %r; deliveries %s; status events %s",
            records,
            "accepted ahead (journaled, then handled)" if accept else "answered once handled",
            "published in bulk when several are ready" if publisher.in_bulk else "one by one",
        )
        self._app = build_app(
            s, self._pipeline, handlers, self._healthy, self._extra_subscriptions, accept
        )
        app = self._app
        self._server_thread = threading.Thread(
            target=app.run, args=(s.app_port,), name="grpc-app", daemon=True
        )
        self._server_thread.start()
        _wait_for_port(s.app_port, 30)
        log.info("gRPC app listening on %d; starting the workflow runtime", s.app_port)
        parts = Parts(
            s,
            self._gateway,
            publisher,
            self._dapr,
            runtime,
            notes,
            self._stopped,
            handlers=handlers,
            workflows=sorted(allowed),
            acting=self._acting,
            records_store=records,
            purges=purges,
            ready=self._ready,
            liveness=self.liveness,
        )
        for addon in self._addons:
            addon.start(parts)
        runtime.start()
        self._runtime = runtime
        self._acting.set()
        pipeline = self._pipeline

        def retry_parked(message: Inbound) -> None:
            response = pipeline.handle(handlers[message.topic], message)
            if response.status is TopicEventResponseStatus.retry:
                return  # still waiting
            if response.status is TopicEventResponseStatus.drop:
                # As the sidecar does for a delivery dropped. Retried here: once dropped, the
                # next pass would find the message handled and unpark it without its dead letter.
                moved = retry_until_done(
                    lambda: publisher.dead_letter(message),
                    self._stopped,
                    f"dead-letter {message.describe()}",
                )
                if not moved:
                    return  # stopping: it stays parked
            parking.unpark(message_key(message.topic, message.source, message.message_id))

        self._parking_thread = threading.Thread(
            target=parking.run, args=(retry_parked, self._stopped), name="parked", daemon=True
        )
        self._parking_thread.start()
        self._wait_until_delivering()
        self._ready.set()
        log.info("worker ready: workflows %s; topics %s", registry.workflow_names, list(handlers))

    def _restart_sidecar_if_wedged(self) -> None:
        """Stopped while liveness fails (a kubelet restarting the worker for it): ask the
        sidecar to shut down too (Dapr's shutdown API), so that it is restarted as well: the
        wedge is the sidecar's, and a new worker on the same sidecar would not heal it."""
        verdict = self.liveness.check()
        if verdict.ok or self._dapr is None:
            return
        log.warning("stopping while not live (%s): shutting the sidecar down too", verdict.reason)
        try:
            self._dapr.shutdown()
        except Exception:
            log.exception("asking the sidecar to shut down")

    def _healthy(self) -> bool:
        """The app-health probe: healthy from the moment the app listens until shutdown, so the
        sidecar turns its subscriptions on at once (messages that come before the workflow
        runtime is connected wait for it in the pipeline)."""
        if self._stopped.is_set():
            return False
        self._probed.set()
        return True

    def _wait_until_delivering(self) -> None:
        """Return once the sidecar delivers messages to this app. A sidecar that probes the
        app's health subscribes only after a healthy probe; one that does not, at its start."""
        interval = (self._facts or read_facts()).probe_interval
        if interval is None:
            return
        if not self._probed.wait(2 * interval + 5):
            log.warning("the sidecar has not probed the app's health yet; carrying on")
            return
        time.sleep(_SUBSCRIBE_SETTLE_SECONDS)

    def stop(self) -> None:
        """Drain and stop; safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._ready.clear()
        self._acting.clear()
        if self._pipeline is not None:
            self._pipeline.in_flight.draining = True
            if not self._pipeline.in_flight.wait_idle(self.settings.shutdown_grace_seconds):
                log.warning(
                    "shutdown: messages still in flight after %.0fs; they will be redelivered",
                    self.settings.shutdown_grace_seconds,
                )
        if self._intake is not None:  # what it accepted and did not run waits in its journal
            self._intake.stop(self.settings.shutdown_grace_seconds)
        settle_until = None  # see Settings.stop_settle_seconds
        if self._runtime is not None:
            try:
                self._runtime.shutdown()
            except Exception:
                log.exception("stopping the workflow runtime")
            settle_until = time.monotonic() + self.settings.stop_settle_seconds
        self._restart_sidecar_if_wedged()
        for addon in self._addons:
            try:
                addon.stop()
            except Exception:
                log.exception("stopping %s", type(addon).__name__)
        if self._app is not None:
            self._app.stop()
        for closeable in (self._gateway, self._dapr):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:
                    log.debug("close failed", exc_info=True)
        if settle_until is not None:
            time.sleep(max(0.0, settle_until - time.monotonic()))
        log.info("worker stopped")
