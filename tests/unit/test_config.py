"""Settings: defaults, then WORKER_* environment variables, then command-line flags."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.config import Settings, load_settings
from worker.events import EventType


def _kwargs(**values: Any) -> dict[str, Any]:
    return values


def test_defaults() -> None:
    settings = Settings()
    assert settings.start_topic == "workflow.start"
    assert settings.approval_topic == "workflow.approval"
    assert settings.control_topic == "workflow.control"
    assert settings.status_topic == "workflow.status"
    assert settings.pubsub_name == "pubsub"
    assert settings.state_store == "statestore"
    assert settings.app_id == "workflow-worker"
    assert settings.app_port == 50051
    assert settings.dead_letter_topic is None
    assert settings.status_events is None
    assert settings.status_events_per_workflow == {}
    assert settings.allowed_workflows is None
    assert settings.workflow_modules == []
    assert settings.max_transient_attempts == 50
    assert settings.idempotency_ttl_seconds == 7 * 24 * 3600


def test_load_settings_without_argv_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_STATUS_TOPIC", "from-env")
    assert load_settings().status_topic == "from-env"
    assert load_settings(None).status_topic == "from-env"


def test_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_STATUS_TOPIC", "events.out")
    monkeypatch.setenv("WORKER_MAX_TRANSIENT_ATTEMPTS", "7")
    settings = Settings()
    assert settings.status_topic == "events.out"
    assert settings.max_transient_attempts == 7
    assert settings.start_topic == "workflow.start"


def test_env_lists_and_maps_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_STATUS_EVENTS", '["completed", "failed"]')
    monkeypatch.setenv("WORKER_STATUS_EVENTS_PER_WORKFLOW", '{"quiet": ["rejected"]}')
    monkeypatch.setenv("WORKER_ALLOWED_WORKFLOWS", '["approval_workflow"]')
    settings = Settings()
    assert settings.status_events == [EventType.COMPLETED, EventType.FAILED]
    assert settings.status_events_per_workflow == {"quiet": [EventType.REJECTED]}
    assert settings.allowed_workflows == ["approval_workflow"]


def test_unknown_event_type_in_env_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_STATUS_EVENTS", '["finished"]')
    with pytest.raises(ValidationError):
        Settings()


def test_cli_flag_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_STATUS_TOPIC", "from-env")
    monkeypatch.setenv("WORKER_PUBSUB_NAME", "env-bus")
    settings = load_settings(["--status-topic", "x"])
    assert settings.status_topic == "x"
    assert settings.pubsub_name == "env-bus"  # no flag: the environment still applies


def test_cli_flags_are_kebab_case() -> None:
    settings = load_settings(
        [
            "--max-transient-attempts",
            "3",
            "--status-events",
            '["completed"]',
            "--allowed-workflows",
            "a,b",
            "--app-id",
            "cli-worker",
        ]
    )
    assert settings.max_transient_attempts == 3
    assert settings.status_events == [EventType.COMPLETED]
    assert settings.allowed_workflows == ["a", "b"]
    assert settings.app_id == "cli-worker"


def test_empty_argv_means_no_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_STATUS_TOPIC", "from-env")
    assert load_settings([]).status_topic == "from-env"


@pytest.mark.parametrize("topic", ["start_topic", "approval_topic", "control_topic"])
def test_duplicate_topics_are_rejected(topic: str) -> None:
    with pytest.raises(ValidationError, match="topics must be distinct"):
        Settings(**_kwargs(**{topic: "workflow.status"}))


def test_duplicate_topics_from_env_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_CONTROL_TOPIC", "workflow.approval")
    with pytest.raises(ValidationError, match="topics must be distinct"):
        Settings()


def test_duplicate_topics_from_cli_are_rejected() -> None:
    with pytest.raises(ValidationError, match="topics must be distinct"):
        load_settings(["--start-topic", "workflow.control"])


def test_app_port_env_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PORT", "6001")
    assert Settings().app_port == 6001


def test_worker_app_port_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_APP_PORT", "6002")
    assert Settings().app_port == 6002


def test_app_id_env_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ID", "orders-worker")
    assert Settings().app_id == "orders-worker"


def test_cli_app_port_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PORT", "6001")
    assert load_settings(["--app-port", "7000"]).app_port == 7000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_status_payload_bytes", 4_095),
        ("idempotency_ttl_seconds", 59),
        ("claim_lease_seconds", 0),
        ("call_timeout_seconds", 0),
        ("max_concurrency", 0),
        ("max_concurrency", 257),
        ("max_transient_attempts", 0),
        ("shutdown_grace_seconds", -1),
        ("stop_settle_seconds", -0.5),
    ],
)
def test_out_of_range_values_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        Settings(**_kwargs(**{field: value}))


def test_bad_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_MAX_CONCURRENCY", "many")
    with pytest.raises(ValidationError):
        Settings()


def test_explicit_worker_app_port_wins_over_dapr_run_app_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_PORT", "6001")
    monkeypatch.setenv("WORKER_APP_PORT", "6002")
    assert Settings().app_port == 6002
