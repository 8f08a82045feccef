"""Starts and stops the worker's parts in the right order.

Start: clients -> gRPC app listening -> WorkflowRuntime (it needs the sidecar, and the sidecar
waits for the app's port). Stop (SIGTERM/SIGINT): stop taking messages, let in-flight ones
finish (bounded), stop the runtime, stop the app.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping

from dapr.clients import DaprClient
from dapr.ext.grpc import App
from dapr.ext.workflow import WorkflowRuntime

from worker.app import Subscriber, build_app
from worker.config import Settings
from worker.gateway import WorkflowGateway
from worker.handlers.approval import ApprovalHandler
from worker.handlers.control import ControlHandler
from worker.handlers.pipeline import Pipeline, TopicHandler
from worker.handlers.start import StartHandler
from worker.hosting import build_runtime
from worker.idempotency import IdempotencyStore, message_key
from worker.publisher import StatusPublisher

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


class WorkerService:
    def __init__(
        self,
        settings: Settings,
        extra_subscriptions: Mapping[tuple[str, str], Subscriber] | None = None,
    ) -> None:
        self.settings = settings
        self._extra_subscriptions = extra_subscriptions
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._app: App | None = None
        self._runtime: WorkflowRuntime | None = None
        self._server_thread: threading.Thread | None = None
        self._dapr: DaprClient | None = None
        self._gateway: WorkflowGateway | None = None
        self._pipeline: Pipeline | None = None

    def start(self) -> None:
        s = self.settings
        self._gateway = WorkflowGateway(s.call_timeout_seconds, sdk_log_level=s.sdk_log_level)
        self._dapr = DaprClient()  # waits (bounded) for the sidecar to be up
        publisher = StatusPublisher(self._dapr, s)
        store = IdempotencyStore(
            self._dapr, s.state_store, s.idempotency_ttl_seconds, s.claim_lease_seconds
        )

        def start_handled(source: str, message_id: str) -> bool | None:
            return store.handled(message_key(s.start_topic, source, message_id))

        runtime, registry = build_runtime(
            publisher, s.workflow_modules, s.sdk_log_level, start_handled
        )
        allowed = registry.workflow_names
        if s.allowed_workflows is not None:
            allowed = s.allowed_workflows
        self._pipeline = Pipeline(store, publisher, s.max_transient_attempts, s.max_message_bytes)
        handlers: dict[str, TopicHandler] = {
            s.start_topic: StartHandler(self._gateway, allowed),
            s.approval_topic: ApprovalHandler(self._gateway),
            s.control_topic: ControlHandler(self._gateway),
        }
        self._app = build_app(
            s, self._pipeline, handlers, self._ready.is_set, self._extra_subscriptions
        )
        app = self._app
        self._server_thread = threading.Thread(
            target=app.run, args=(s.app_port,), name="grpc-app", daemon=True
        )
        self._server_thread.start()
        _wait_for_port(s.app_port, 30)
        log.info("gRPC app listening on %d; starting the workflow runtime", s.app_port)
        runtime.start()
        self._runtime = runtime
        self._ready.set()
        log.info("worker ready: workflows %s; topics %s", registry.workflow_names, list(handlers))

    def stop(self) -> None:
        """Drain and stop; safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._ready.clear()
        if self._pipeline is not None:
            self._pipeline.in_flight.draining = True
            if not self._pipeline.in_flight.wait_idle(self.settings.shutdown_grace_seconds):
                log.warning(
                    "shutdown: messages still in flight after %.0fs; they will be redelivered",
                    self.settings.shutdown_grace_seconds,
                )
        settle_until = None  # see Settings.stop_settle_seconds
        if self._runtime is not None:
            try:
                self._runtime.shutdown()
            except Exception:
                log.exception("stopping the workflow runtime")
            settle_until = time.monotonic() + self.settings.stop_settle_seconds
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
