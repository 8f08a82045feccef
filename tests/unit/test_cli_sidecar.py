"""wfctl and the sidecar: faults classified into exit codes, the checks before publishing, and
the client component kept in step with the shared profile."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from scripts import devstack
from worker.cli.exitcodes import CliError, Exit
from worker.cli.sidecar import (
    Address,
    Connection,
    Metadata,
    Seen,
    publish_error,
    subscribe_error,
)


class RpcLike(Exception):
    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> Any:
        return type("Code", (), {"name": self._code})()

    def details(self) -> str:
        return self._details


def test_publish_errors() -> None:
    denied = publish_error(RpcLike("PERMISSION_DENIED", "topic x is not allowed"), "x", "me")
    assert denied.code is Exit.FORBIDDEN
    assert "Grant app-id 'me'" in denied.message
    down = publish_error(RpcLike("UNAVAILABLE", "connection refused"), "x", "me")
    assert down.code is Exit.UNAVAILABLE and "UNAVAILABLE: connection refused" in down.message


def test_subscribe_errors_also_when_the_sdk_wrapped_them() -> None:
    try:
        try:
            raise RpcLike("UNKNOWN", "subscription to topic 'workflow.status' is not allowed")
        except RpcLike as inner:
            raise Exception(f"Error while initializing stream: {inner}")  # noqa: B904 (as the SDK)
    except Exception as wrapped:
        error = subscribe_error(wrapped, "workflow.status", "intruder")
    assert error.code is Exit.FORBIDDEN
    assert "app-id 'intruder' may not subscribe to workflow.status" in error.message
    other = subscribe_error(RuntimeError("boom"), "workflow.status", "me")
    assert other.code is Exit.UNAVAILABLE


def meta(kind: str, *subs: dict[str, str]) -> Metadata:
    return Metadata("workflow-client", {"pubsub": kind}, list(subs))


def test_the_pubsub_component_must_be_there() -> None:
    connection = Connection(Address(), 1)
    assert connection.check_pubsub(meta("pubsub.redis"), "pubsub") == "pubsub.redis"
    with pytest.raises(CliError) as caught:
        connection.check_pubsub(Metadata("app", {"statestore": "state.redis"}, []), "pubsub")
    assert caught.value.code is Exit.UNAVAILABLE
    assert "no pub/sub component 'pubsub' (its components: statestore (state.redis))" in str(
        caught.value
    )


def test_in_memory_pubsub_reaches_only_a_worker_in_the_same_sidecar() -> None:
    connection = Connection(Address(), 1)
    worker_here = meta("pubsub.in-memory", {"pubsubname": "pubsub", "topic": "workflow.start"})
    connection.check_reaches_worker(worker_here, "pubsub", "pubsub.in-memory", "workflow.start")
    connection.check_reaches_worker(meta("pubsub.redis"), "pubsub", "pubsub.redis", "x")
    with pytest.raises(CliError) as caught:
        connection.check_reaches_worker(
            meta("pubsub.in-memory"), "pubsub", "pubsub.in-memory", "workflow.start"
        )
    assert "would reach no worker" in caught.value.message


def test_a_second_status_subscriber_in_a_consumer_group_sidecar_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = Connection(Address(), 1)
    busy = meta(
        "pubsub.redis", {"pubsubname": "pubsub", "topic": "workflow.status", "type": "STREAMING"}
    )
    monkeypatch.setattr(connection, "metadata", lambda: busy)
    monkeypatch.setattr("worker.cli.sidecar._SUBSCRIBER_GONE_SECONDS", 0.3)
    began = time.monotonic()
    with pytest.raises(CliError) as caught:
        connection.check_alone(busy, "pubsub", "pubsub.redis", "workflow.status")
    assert time.monotonic() - began >= 0.3  # it waited for one going away
    assert "already subscribes to workflow.status (STREAMING)" in caught.value.message
    # In-memory pub/sub gives every subscription every message: no conflict.
    connection.check_alone(busy, "pubsub", "pubsub.in-memory", "workflow.status")


def test_no_sidecar_is_unavailable_within_the_connect_timeout() -> None:
    dead = devstack.free_port()
    connection = Connection(Address(http_port=dead), 0.5)
    began = time.monotonic()
    with pytest.raises(CliError) as caught:
        connection.wait_healthy()
    assert time.monotonic() - began < 5
    assert caught.value.code is Exit.UNAVAILABLE
    assert f"no healthy Dapr sidecar at http://127.0.0.1:{dead} after 0.5s" in caught.value.message


def test_addresses() -> None:
    assert Address().http_url == "http://127.0.0.1:3500"
    assert Address().grpc_address == "127.0.0.1:50001"
    assert Address(http_endpoint="https://d.example/").http_url == "https://d.example"


def test_seen_is_bounded() -> None:
    seen = Seen(limit=2)
    assert seen.first_time("a") and not seen.first_time("a")
    assert seen.first_time("b") and seen.first_time("c")
    assert seen.first_time("a")  # forgotten: the oldest went first


def _entries(text: str) -> dict[str, str]:
    return dict(re.findall(r'- name: (\w+)\n\s+value: "([^"]*)"', text))


def test_the_client_component_is_the_shared_one_but_for_how_it_reads() -> None:
    shared = _entries((devstack.COMPONENTS / "redis" / "pubsub.yaml").read_text())
    client = _entries((devstack.COMPONENTS / "client" / "pubsub.yaml").read_text())
    own = {"consumerID", "readTimeout", "processingTimeout", "redeliverInterval", "concurrency"}
    assert {k: v for k, v in client.items() if k not in own} == {
        k: v for k, v in shared.items() if k not in own
    }
    assert "{uuid}" in client["consumerID"]
    assert client["redeliverInterval"].isdigit()  # milliseconds: "1s" would be ignored
