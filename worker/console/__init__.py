"""The operator console: a live web page and a JSON API for the instances this worker hosts.

An add-on of the worker service (`worker.service.Addon`), turned on by ``console_enabled``: the
core never imports it. It serves, on ``console_host:console_port`` (127.0.0.1:8088):

- the instance list (filters, counts per status, sorting, pages; live by server-sent events)
  from a read model fed by the status events this worker publishes (`worker.console.model`);
- an instance's page: its state, its history as a timeline, the status events seen for it;
- actions and bulk actions, each one message through the worker's own line
  (`worker.console.actions`): the console is one more client of the worker;
- the JSON API under ``/api`` (`worker.console.api`), documented at ``/api/docs``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from worker.console.actions import Actions, Jobs
from worker.console.auth import Authenticator
from worker.console.model import InstanceIndex, Reconciler
from worker.console.web import Context, build_app
from worker.handlers.pipeline import Pipeline
from worker.idempotency import IdempotencyStore
from worker.service import Parts

log = logging.getLogger(__name__)

__all__ = ["Console"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """Plugs the console into a starting `WorkerService`."""

    def __init__(self) -> None:
        self.index = InstanceIndex()
        self.port: int | None = None
        self.url: str | None = None
        self.context: Context | None = None
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._actions: Actions | None = None
        self._jobs: Jobs | None = None

    def start(self, parts: Parts) -> None:
        s = parts.settings
        if not s.console_users and not _loopback(s.console_host):
            raise ValueError(
                f"console_host {s.console_host} is not loopback: set console_users (tokens) "
                "before putting the console on the network"
            )
        secret = s.console_secret.get_secret_value().encode() if s.console_secret else None
        auth = Authenticator(list(s.console_users), secret)
        # The console's own line: the same store, publisher and handlers as messages; no
        # parking lot (a caller who waits is told of an unknown instance at once).
        store = IdempotencyStore(
            parts.state, parts.records_store, s.idempotency_ttl_seconds, s.claim_lease_seconds
        )
        pipeline = Pipeline(store, parts.publisher, s.max_transient_attempts, s.max_message_bytes)
        self._actions = Actions(pipeline, parts.handlers, s, s.console_action_timeout_seconds)
        self._jobs = Jobs(self._actions)
        parts.publisher.listeners.append(self.index.on_status)
        parts.publisher.listeners.append(self._actions.on_status)
        self.context = Context(
            settings=s,
            index=self.index,
            actions=self._actions,
            jobs=self._jobs,
            auth=auth,
            gateway=parts.gateway,
            workflows=list(parts.workflows),
            stopping=parts.stopping,
            acting=parts.acting,
        )
        reconciler = Reconciler(self.index, parts.gateway, s.console_refresh_seconds)
        self._spawn("console-reconcile", lambda: reconciler.run(parts.stopping, parts.acting))

        listener = socket.socket(
            socket.AF_INET6 if ":" in s.console_host else socket.AF_INET, socket.SOCK_STREAM
        )
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by each connection: without it a response's head and body wait for the
        # client's delayed ACK (a 40 ms floor under every request).
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((s.console_host, s.console_port))  # fails here, at start, when taken
        self.port = int(listener.getsockname()[1])
        config = uvicorn.Config(
            build_app(self.context),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._spawn("console-http", lambda: server.run(sockets=[listener]))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        host = s.console_host if ":" not in s.console_host else f"[{s.console_host}]"
        self.url = f"http://{host}:{self.port}/"
        if auth.generated_token is not None:
            log.info(
                "console: %s?token=%s (operator 'local'; set WORKER_CONSOLE_USERS for named "
                "users and roles); API docs %sapi/docs",
                self.url,
                auth.generated_token,
                self.url,
            )
        else:
            log.info(
                "console: %s (%d user(s)); API docs %sapi/docs",
                self.url,
                len(s.console_users),
                self.url,
            )

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._jobs is not None:
            self._jobs.close()
        if self._actions is not None:
            self._actions.close()
        for thread in self._threads:
            thread.join(timeout=5)
