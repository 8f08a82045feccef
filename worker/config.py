"""All configuration in one place: environment variables (``WORKER_*``) and command-line flags.

Flags win over environment variables, which win over the defaults below.
``python -m worker --help`` lists every setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.events import EventType
from worker.topics import APPROVAL, CONTROL, START, STATUS, TOPICS


class ConsoleUser(BaseModel):
    """One user of the operator console: the name the audit log shows, what the user may do
    (viewer: read; operator: read and act) and the bearer token that signs them in (or its
    SHA-256 in hex, to keep the token itself out of the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    role: Literal["viewer", "operator"]
    token: SecretStr | None = Field(default=None, min_length=16)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_token(self) -> ConsoleUser:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError(f"console user {self.name}: give exactly one of token, token_sha256")
        return self


class Settings(BaseSettings):
    """Settings of one worker process."""

    model_config = SettingsConfigDict(
        env_prefix="WORKER_",
        cli_kebab_case=True,
        cli_prog_name="python -m worker",
        cli_implicit_flags=True,
        extra="ignore",
    )

    app_port: int = Field(
        default=50051,
        description="Port of the gRPC app that the sidecar calls (dapr run sets APP_PORT).",
        validation_alias=AliasChoices("worker_app_port", "app_port"),
    )
    app_id: str = Field(
        default="workflow-worker",
        description="Dapr app-id, used as the source of published events.",
        validation_alias=AliasChoices("worker_app_id", "app_id"),
    )
    pubsub_name: str = Field(default="pubsub", description="Pub/sub component for all topics.")
    # One field per topic of `worker.topics` (a unit test keeps them in step).
    start_topic: str = START.default
    approval_topic: str = APPROVAL.default
    control_topic: str = CONTROL.default
    status_topic: str = STATUS.default
    dead_letter_topic: str | None = Field(
        default=None, description="Rejected messages are moved here when set."
    )
    state_store: str = Field(
        default="statestore",
        description="State store for the worker's durable state (the watch's records).",
    )
    idempotency_store: str | None = Field(
        default=None,
        description="State store for idempotency records, parked messages and the intake's "
        "journal; default: the one named `idempotency` when the sidecar has it, else "
        "state_store.",
    )
    accept_ahead: bool | None = Field(
        default=None,
        description="Answer a delivery once it is journaled and handle it after (worker.intake); "
        "default: on when the pub/sub delivers one message at a time (in-memory).",
    )
    idempotency_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a handled message is remembered."
    )
    claim_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A claim on a message older than this is taken over by a redelivery.",
    )
    call_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Deadline of every call to the sidecar."
    )
    bulk_publish: bool | None = Field(
        default=None,
        description="Status events published at once go out in one bulk publish; default: on "
        "when the pub/sub does not partition (in-memory, Redis), which a bulk publish's "
        "missing per-event partitionKey would break.",
    )
    max_concurrency: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Messages handled at once (gRPC thread pool, or the intake's lanes).",
    )
    max_transient_attempts: int = Field(
        default=50,
        ge=1,
        description="A message still failing transiently after this many tries is rejected.",
    )
    allowed_workflows: list[str] | None = Field(
        default=None,
        description="Workflows that messages may start; default: every registered workflow.",
    )
    workflow_modules: list[str] = Field(
        default_factory=list,
        description="Python modules with user workflows to host (each defines register(registry)).",
    )
    status_events: list[EventType] | None = Field(
        default=None, description="Event types to publish; default: all."
    )
    status_events_per_workflow: dict[str, list[EventType]] = Field(
        default_factory=dict,
        description='Per-workflow override of status_events, JSON: {"name": ["completed"]}.',
    )
    max_message_bytes: int = Field(
        default=1_000_000, ge=1_024, description="Larger inbound messages are rejected."
    )
    max_status_payload_bytes: int = Field(
        default=240_000,
        ge=4_096,
        description="Status events above this size have output/input truncated and flagged.",
    )
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=0, description="How long SIGTERM waits for in-flight messages."
    )
    stop_settle_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "After closing its workflow stream, the worker waits this long before it exits, so "
            "that a restart onto the same running sidecar cannot reconnect within daprd "
            "1.18.2's re-registration race window (about a second)."
        ),
    )
    echo_status: bool = Field(
        default=False,
        description="Also log one compact line per published status event (logger "
        "worker.status): a way to watch the status topic without a consumer of your own.",
    )
    unknown_instance_grace_seconds: float = Field(
        default=180.0,
        ge=0,
        description="An approval or control message for an instance that does not exist "
        "(yet) is parked and retried for this long before it is rejected: it may have been "
        "published right after the start that creates the instance.",
    )
    watch_enabled: bool = Field(
        default=True,
        description="Publish every status change of the hosted instances, also those made "
        "by others (the dapr CLI, other clients, daprd's retention policy): worker.watch.",
    )
    watch_sweep_seconds: float = Field(
        default=5.0,
        ge=0.5,
        le=30.0,
        description="How often the watch lists the instances: a purge is published within this.",
    )
    watch_recheck_seconds: float = Field(
        default=60.0,
        ge=1.0,
        description="How often the watch re-reads each unfinished instance (a change is "
        "normally seen at once; this catches what was missed, and stalls).",
    )
    watch_lease_seconds: float = Field(
        default=20.0,
        ge=2.0,
        description="One replica sweeps at a time; another takes over this long after it dies.",
    )
    stall_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A step (activity, child workflow) in flight longer than this is "
        "published as `stalled`.",
    )
    console_enabled: bool = Field(
        default=False,
        description="Serve the operator console, a web page and an HTTP API (worker.console); "
        "scripts/run.sh turns it on.",
    )
    console_host: str = Field(
        default="127.0.0.1",
        description="Address the console listens on. Other than loopback only with console_users.",
    )
    console_port: int = Field(
        default=8088, ge=0, le=65535, description="Console port (0: any free port, logged)."
    )
    console_users: list[ConsoleUser] = Field(
        default_factory=list,
        description='Console users, JSON: [{"name": "ana", "role": "operator", "token": "..."}] '
        "(roles viewer, operator; token_sha256 in place of token). None: one operator token, "
        "made at each start and printed with the console's address.",
    )
    console_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs console sessions; default: random at each start. Give "
        "replicas behind one address the same one.",
    )
    console_action_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A console or API action not finished within this is answered 202 and "
        "goes on; the same Idempotency-Key then fetches its outcome.",
    )
    console_refresh_seconds: float = Field(
        default=15.0,
        ge=1.0,
        description="How often the console's instance list is reconciled with the sidecar "
        "(new and purged ids; a share of the unfinished instances re-read).",
    )
    metrics_enabled: bool = Field(
        default=False,
        description="Serve Prometheus metrics on metrics_host:metrics_port, path /metrics "
        "(worker.telemetry.metrics); scripts/run.sh turns it on.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics endpoint listens on (0.0.0.0: every interface).",
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Metrics port (OpenTelemetry's Prometheus default; 0: any free port, logged).",
    )
    health_enabled: bool = Field(
        default=False,
        description="Serve /readyz and /livez on health_host:health_port for a kubelet's "
        "probes (worker.health); the Kubernetes manifests turn it on.",
    )
    health_host: str = Field(
        default="127.0.0.1",
        description="Address the health endpoint listens on (0.0.0.0: every interface).",
    )
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="Health port (0: any free port, logged)."
    )
    liveness_window_seconds: float = Field(
        default=300.0,
        gt=0,
        description="/livez fails once one message has failed with a sidecar deadline "
        "(DEADLINE_EXCEEDED) at every try for this long: what only a restart heals.",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one line for a terminal; json: one JSON object per line (time, "
        "level, logger, message, and instance_id, message_id, topic, trace_id where they "
        "apply), for a log collector (worker.telemetry.logs).",
    )
    sdk_log_level: str = Field(
        default="WARNING", description="Log level of the Dapr SDK's workflow client and runtime."
    )

    @model_validator(mode="after")
    def _lease_outlives_sweeps(self) -> Settings:
        if self.watch_lease_seconds < 2 * self.watch_sweep_seconds:
            raise ValueError("watch_lease_seconds must be at least twice watch_sweep_seconds")
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        topics = [topic.address(self) for topic in TOPICS]
        if len(set(topics)) != len(topics):
            raise ValueError(f"topics must be distinct, got {topics}")
        return self


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by ``argv`` flags (``None``: no flags)."""
    if argv is None:
        return Settings()
    return Settings(_cli_parse_args=list(argv))
