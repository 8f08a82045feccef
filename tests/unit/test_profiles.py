"""The profiles' component sets (components/<profile>/) agree where they must."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts import devstack

SHARED = ("redis", "postgres-kafka", "postgres-rabbitmq")


def _entries(text: str) -> dict[str, str]:
    return dict(re.findall(r'- name: (\w+)\n\s+value: "([^"]*)"', text))


def _pubsub(profile: str) -> dict[str, str]:
    return _entries((devstack.COMPONENTS / profile / "pubsub.yaml").read_text())


@pytest.mark.parametrize("profile", SHARED)
def test_a_shared_profile_has_the_same_files_as_redis(profile: str) -> None:
    names = {p.name for p in (devstack.COMPONENTS / profile).glob("*.yaml")}
    assert names == {"pubsub.yaml", "statestore.yaml", "resiliency.yaml"}


@pytest.mark.parametrize("profile", SHARED)
def test_who_may_control_workflows_is_the_same_on_every_broker(profile: str) -> None:
    scopes = ("protectedTopics", "publishingScopes", "subscriptionScopes")
    assert {k: _pubsub(profile)[k] for k in scopes} == {k: _pubsub("redis")[k] for k in scopes}


def test_kafka_is_set_to_lose_nothing() -> None:
    kafka = _pubsub("postgres-kafka")
    assert kafka["initialOffset"] == "oldest"  # "newest" skips what came before a group joined
    assert kafka["consumerGroup"] == "{appID}"  # replicas share one, each consumer has its own
    assert kafka["consumeRetryEnabled"] == "true"  # else a failed message commits with the next
    assert kafka["backOffMaxRetries"] == "-1"
    assert kafka["producerRequiredAcks"] == "all"


def test_rabbitmq_is_set_to_lose_nothing() -> None:
    rabbit = _pubsub("postgres-rabbitmq")
    assert rabbit["deletedWhenUnused"] == "false"  # the default drops the queue with its reader
    assert rabbit["durable"] == "true"
    assert rabbit["deliveryMode"] == "2"  # persistent: the default, 0, dies with the broker
    assert rabbit["publisherConfirm"] == "true"
    assert rabbit["autoAck"] == "false"
    assert rabbit["requeueInFailure"] == "true"  # the default throws away what failed
    # As many deliveries at once as the worker takes (WORKER_MAX_CONCURRENCY's default).
    assert rabbit["prefetchCount"] == "32"


@pytest.mark.parametrize("profile", ["postgres-kafka", "postgres-rabbitmq"])
def test_postgres_is_the_actor_state_store_at_v2(profile: str) -> None:
    text = (devstack.COMPONENTS / profile / "statestore.yaml").read_text()
    assert "type: state.postgresql\n" in text and re.search(r"^  version: v2$", text, re.M)
    assert _entries(text)["actorStateStore"] == "true"


def test_the_stack_fills_in_the_backends_ports(tmp_path: Path) -> None:
    stack = devstack.Stack(tmp_path)
    stack.postgres_port, stack.kafka_port = 25432, 29092
    copied = stack.components("postgres-kafka")
    assert "127.0.0.1:25432/dapr" in (copied / "statestore.yaml").read_text()
    assert _entries((copied / "pubsub.yaml").read_text())["brokers"] == "127.0.0.1:29092"


def test_the_stack_fills_in_rabbitmqs_port(tmp_path: Path) -> None:
    stack = devstack.Stack(tmp_path)
    stack.postgres_port, stack.rabbitmq_port = 25432, 25672
    copied = stack.components("postgres-rabbitmq")
    assert "127.0.0.1:25432/dapr" in (copied / "statestore.yaml").read_text()
    connection = _entries((copied / "pubsub.yaml").read_text())["connectionString"]
    assert connection == "amqp://guest:guest@127.0.0.1:25672"
