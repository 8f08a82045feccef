"""Health endpoints a kubelet probes (``WORKER_HEALTH_*``): an add-on of the worker service.

- ``GET /readyz``: 200 while the worker takes messages (the sidecar delivers to it and its
  workflow runtime is connected: the service's "worker ready"), 503 before that and from the
  moment it starts to stop (it drains then). A readiness probe.
- ``GET /livez``: 200 unless only a restart heals the worker (`worker.liveness`: one message
  has failed with the sidecar's deadline at every try for ``WORKER_LIVENESS_WINDOW_SECONDS``),
  then 503 with the reason. A liveness probe; stopped for it, the worker shuts its sidecar down
  too (`WorkerService`), so both are restarted. Also answers while the worker starts and
  drains: a startup probe.

Plain text bodies; any other path is 404. Served by the standard library's HTTP server on a
thread of its own, from the moment the gRPC app listens until the worker has drained.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.liveness import Liveness
from worker.service import Parts

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ready: threading.Event | None = None
    liveness: Liveness | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/readyz":
            ready = self.server.ready is not None and self.server.ready.is_set()
            self._answer(200 if ready else 503, "ready" if ready else "not ready")
        elif path == "/livez":
            verdict = self.server.liveness.check() if self.server.liveness else None
            if verdict is None or verdict.ok:
                self._answer(200, "live")
            else:
                self._answer(503, f"not live: {verdict.reason}")
        else:
            self._answer(404, "not found")

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
        log.debug(format, *args)


class Health:
    """The health add-on: ``/readyz`` and ``/livez`` on ``host``:``port``."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, parts: Parts) -> None:
        server = _Server((self._host, self._port), _Handler)
        server.ready, server.liveness = parts.ready, parts.liveness
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="health", daemon=True
        )
        self._thread.start()
        port = int(server.server_address[1])
        host = self._host if ":" not in self._host else f"[{self._host}]"
        self.url = f"http://{host}:{port}"
        log.info("health: %s/readyz, %s/livez", self.url, self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
