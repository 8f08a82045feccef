"""A worker with its console, for the console's end-to-end and browser tests.

App-id ``console-worker``, topics ``console.workflow.*`` (the session observer hears its status
topic), the console on a free port with two users: ``ana`` (operator) and ``vic`` (viewer).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker, start_worker, unique

OPERATOR_TOKEN = "console-operator-token-for-tests"
VIEWER_TOKEN = "console-viewer-token-for-tests"
PREFIX = "console."


@dataclass
class ConsoleWorker:
    worker: Worker
    url: str
    operator: httpx.Client
    viewer: httpx.Client
    anonymous: httpx.Client

    def topic(self, name: str) -> str:
        return f"{PREFIX}workflow.{name}"

    def log(self) -> str:
        return self.worker.proc.log.read_text(errors="replace")

    def start(
        self, workflow: str, instance_id: str, data: Any = None, key: str | None = None
    ) -> Any:
        """Start ``instance_id`` through the API as the operator (Idempotency-Key ``key``, a
        new one by default); its answer."""
        body: dict[str, Any] = {"workflow": workflow, "instance_id": instance_id}
        if data is not None:
            body["input"] = data
        headers = {"Idempotency-Key": key or f"it-{uuid.uuid4().hex}"}
        answer = self.operator.post("/api/instances", json=body, headers=headers)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def purge_candidates(self, prefix: str) -> tuple[list[str], str, str]:
        """For a bulk purge by ``prefix``: three finished instances under it, one still
        running under it, and one finished elsewhere; all listed by the console."""
        done = [f"{prefix}-done-{n}" for n in range(3)]
        running, other = f"{prefix}-running", unique("keep")
        for instance_id in done:
            self.start("greeting_workflow", instance_id, "x")
        self.start("waiting_workflow", running)
        self.start("greeting_workflow", other, "x")
        for instance_id in [*done, other]:
            self.wait_listed(instance_id, "COMPLETED")
        return done, running, other

    def wait_listed(
        self, instance_id: str, status: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Poll the API's list until ``instance_id`` shows (in ``status``)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            items = self.viewer.get("/api/instances", params={"q": instance_id}).json()["items"]
            for item in items:
                if item["instance_id"] == instance_id and (
                    status is None or item["status"] == status
                ):
                    return item  # type: ignore[no-any-return]
                last = item
            time.sleep(0.2)
        raise AssertionError(f"{instance_id} not listed as {status} after {timeout}s: {last}")


@pytest.fixture(scope="session")
def console(stack: devstack.Stack, observer: Observer) -> Iterator[ConsoleWorker]:
    port = devstack.free_port()
    users = [
        {"name": "ana", "role": "operator", "token": OPERATOR_TOKEN},
        {"name": "vic", "role": "viewer", "token": VIEWER_TOKEN},
    ]
    running = start_worker(
        stack,
        "console-worker",
        topic_prefix=PREFIX,
        env={
            "WORKER_CONSOLE_ENABLED": "true",
            "WORKER_CONSOLE_PORT": str(port),
            "WORKER_CONSOLE_USERS": json.dumps(users),
            "WORKER_CONSOLE_REFRESH_SECONDS": "2",
        },
    )
    url = f"http://127.0.0.1:{port}"
    clients = [
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        for token in (OPERATOR_TOKEN, VIEWER_TOKEN)
    ]
    anonymous = httpx.Client(base_url=url, timeout=30)
    try:
        devstack.wait_until(
            lambda: clients[1].get("/api/instances").json().get("loaded") is True,
            30,
            "the console's first reconciliation",
        )
        yield ConsoleWorker(running, url, clients[0], clients[1], anonymous)
    finally:
        for client in (*clients, anonymous):
            client.close()
        running.stop()
