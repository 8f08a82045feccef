"""deploy/: every overlay, rendered by the pinned kustomize, against the strict schemas of
the pinned Kubernetes versions and Dapr's CRDs; and what a schema cannot see: the annotations
Dapr's injector reads, and the pieces that must agree with each other and with the worker."""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import schemas
from worker.config import Settings, load_settings

OVERLAYS = schemas.overlays()
APP_ID = "workflow-worker"
UID = 10001  # the Containerfile's user


def _by_kind(docs: tuple[schemas.Document, ...], kind: str) -> list[schemas.Document]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: tuple[schemas.Document, ...], kind: str) -> schemas.Document:
    (found,) = _by_kind(docs, kind)
    return found


def _pod(docs: tuple[schemas.Document, ...]) -> dict[str, Any]:
    template: dict[str, Any] = _one(docs, "Deployment")["spec"]["template"]
    return template


def _worker(docs: tuple[schemas.Document, ...]) -> dict[str, Any]:
    (container,) = [c for c in _pod(docs)["spec"]["containers"] if c["name"] == "worker"]
    return dict(container)


def _env(docs: tuple[schemas.Document, ...]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _worker(docs)["env"]}


def _component(docs: tuple[schemas.Document, ...], name: str) -> schemas.Document:
    (found,) = [d for d in _by_kind(docs, "Component") if d["metadata"]["name"] == name]
    return found


def _metadata(component: schemas.Document) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in component["spec"]["metadata"]}


@pytest.fixture(params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def rendered(request: pytest.FixtureRequest) -> tuple[schemas.Document, ...]:
    overlay: Path = request.param
    return schemas.render(overlay)


def test_there_is_an_overlay_per_backend_and_redis_is_one() -> None:
    assert "redis" in [p.name for p in OVERLAYS]
    assert not (schemas.PROJECT / "deploy" / "base" / "statestore.yaml").exists()


@pytest.mark.parametrize("k8s", schemas.kubernetes_versions())
def test_every_rendered_resource_fits_its_schema(
    rendered: tuple[schemas.Document, ...], k8s: str
) -> None:
    errors = [e for doc in rendered for e in schemas.validate(doc, k8s)]
    assert errors == []


def test_the_render_holds_what_a_pod_needs(rendered: tuple[schemas.Document, ...]) -> None:
    kinds = sorted(f"{d['apiVersion']} {d['kind']}" for d in rendered)
    assert kinds == sorted(
        [
            "apps/v1 Deployment",
            "dapr.io/v1alpha1 Component",
            "dapr.io/v1alpha1 Component",
            "dapr.io/v1alpha1 Configuration",
            "dapr.io/v1alpha1 Resiliency",
            "policy/v1 PodDisruptionBudget",
            "v1 Service",
            "v1 ServiceAccount",
        ]
    )
    # no Secret in the manifests: secrets are created in the cluster, never kept in git
    assert not any(d["kind"] == "Secret" for d in rendered)
    names = {d["metadata"]["name"] for d in _by_kind(rendered, "Component")}
    assert names == {"statestore", "pubsub"}
    store = _metadata(_component(rendered, "statestore"))
    assert store["actorStateStore"]["value"] == "true"


def test_a_resource_with_an_unknown_field_is_refused(
    rendered: tuple[schemas.Document, ...],
) -> None:
    """The check is strict for Kubernetes' kinds too (not only for Dapr's)."""
    deployment = copy.deepcopy(_one(rendered, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnly"] = True
    for k8s in schemas.kubernetes_versions():
        (error,) = schemas.validate(deployment, k8s)
        assert "containers.0.securityContext" in error
        assert "'readOnly' was unexpected" in error


# --- Dapr's annotations, as daprd's injector reads them ------------------------------------------


def _injector_annotations() -> dict[str, str]:
    """Every annotation the injector reads, with the Go type of its field
    (pkg/injector/patcher/sidecar.go at the pinned runtime)."""
    source = schemas.dapr_module() / "pkg" / "injector" / "patcher" / "sidecar.go"
    found = re.findall(r'^\s*\w+\s+(\*?\w+)\s+`annotation:"([^"]+)"', source.read_text(), re.M)
    assert len(found) > 40, "the injector's annotations were not found"
    return {key: go_type.lstrip("*") for go_type, key in found}


def test_dapr_annotations_are_the_injectors_and_parse_as_it_reads_them(
    rendered: tuple[schemas.Document, ...],
) -> None:
    known = _injector_annotations()
    listed = schemas.dapr_module() / "pkg" / "injector" / "annotations" / "annotations.go"
    names = set(re.findall(r'"(dapr\.io/[a-z0-9-]+)"', listed.read_text()))
    annotations = _pod(rendered)["metadata"]["annotations"]
    ours = {k: v for k, v in annotations.items() if k.startswith("dapr.io/")}
    assert ours
    for key, value in ours.items():
        assert key in known and key in names, f"daprd {schemas.dapr_version()} reads no {key}"
        assert isinstance(value, str), f"{key}: annotation values are strings"
        go_type = known[key]
        if go_type == "bool":
            # the injector takes anything else silently as false
            assert value in ("true", "false"), f"{key}: {value!r}"
        elif go_type.startswith("int"):
            assert re.fullmatch(r"-?[0-9]+", value), f"{key}: {value!r} is not an integer"
        else:
            assert go_type == "string", f"{key}: {go_type}"
    for key in ("dapr.io/block-shutdown-duration",):
        assert re.fullmatch(r"[0-9]+(ms|s|m)", ours[key]), f"{key}: a Go duration"


def test_the_sidecar_is_set_up_as_the_worker_needs(rendered: tuple[schemas.Document, ...]) -> None:
    a = _pod(rendered)["metadata"]["annotations"]
    env = _env(rendered)
    assert a["dapr.io/enabled"] == "true"
    assert a["dapr.io/app-id"] == env["WORKER_APP_ID"]["value"] == APP_ID
    assert a["dapr.io/app-protocol"] == "grpc"
    ports = {p["name"]: p["containerPort"] for p in _worker(rendered)["ports"]}
    assert int(a["dapr.io/app-port"]) == int(env["WORKER_APP_PORT"]["value"]) == ports["grpc"]
    assert a["dapr.io/enable-app-health-check"] == "true"
    configs = {d["metadata"]["name"] for d in _by_kind(rendered, "Configuration")}
    assert a["dapr.io/config"] in configs
    for key in ("cpu-request", "cpu-limit", "memory-request", "memory-limit"):
        assert a[f"dapr.io/sidecar-{key}"], key
    assert a["dapr.io/enable-metrics"] == "true"
    # Shutdown: daprd keeps serving the worker's calls while it drains (block-shutdown), then
    # shuts down itself; the pod's grace period covers both.
    block = int(a["dapr.io/block-shutdown-duration"].removesuffix("s"))
    drain = float(env["WORKER_SHUTDOWN_GRACE_SECONDS"]["value"])
    settle = Settings.model_fields["stop_settle_seconds"].default
    assert drain + settle < block
    grace = _pod(rendered)["spec"]["terminationGracePeriodSeconds"]
    assert block + int(a["dapr.io/graceful-shutdown-seconds"]) < grace


# --- the worker's settings ---------------------------------------------------------------------


def test_the_workers_environment_names_real_settings(
    rendered: tuple[schemas.Document, ...],
) -> None:
    env = _env(rendered)
    fields = set(Settings.model_fields)
    for name in env:
        assert name.startswith("WORKER_"), name
        assert name.removeprefix("WORKER_").lower() in fields, f"{name} is no setting"


def test_the_workers_environment_is_valid_and_serves_on_the_pod_address(
    rendered: tuple[schemas.Document, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings the pod gets, read as the worker reads them (with made-up secrets)."""
    secrets = {
        ("workflow-worker-console", "users"): json.dumps(
            [{"name": "ana", "role": "operator", "token_sha256": "0" * 64}]
        ),
        ("workflow-worker-console", "session-secret"): "s" * 32,
    }
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, e in _env(rendered).items():
        if "value" in e:
            monkeypatch.setenv(name, e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            monkeypatch.setenv(name, secrets[(ref["name"], ref["key"])])
    settings = load_settings([])
    assert settings.console_enabled and settings.metrics_enabled
    assert settings.console_host == settings.metrics_host == "0.0.0.0"
    assert settings.console_users, "users come from the Secret: a console on 0.0.0.0 needs them"
    ports = {p["name"]: p["containerPort"] for p in _worker(rendered)["ports"]}
    assert (ports["console"], ports["metrics"]) == (settings.console_port, settings.metrics_port)
    pubsub = _metadata(_component(rendered, "pubsub"))
    assert int(pubsub["concurrency"]["value"]) == settings.max_concurrency


def test_the_image_is_the_packages_version(rendered: tuple[schemas.Document, ...]) -> None:
    with (schemas.PROJECT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    worker = _worker(rendered)
    assert worker["image"] == f"dapr-workflow-worker:{version}"
    assert "command" not in worker  # the image's own entrypoint and command start it


# --- security -----------------------------------------------------------------------------------


def test_the_pod_runs_locked_down(rendered: tuple[schemas.Document, ...]) -> None:
    spec = _pod(rendered)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    accounts = {d["metadata"]["name"] for d in _by_kind(rendered, "ServiceAccount")}
    assert spec["serviceAccountName"] in accounts
    ctx = _worker(rendered)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == ctx["runAsGroup"] == UID
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in _worker(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_secrets_come_from_secrets_and_components_are_scoped(
    rendered: tuple[schemas.Document, ...],
) -> None:
    for doc in _by_kind(rendered, "Component"):
        assert APP_ID in doc.get("scopes", []), f"{schemas.describe(doc)} is not scoped"
        refs = [m for m in doc["spec"]["metadata"] if "secretKeyRef" in m]
        for m in doc["spec"]["metadata"]:
            if re.search(r"password|secret|token|key$", m["name"], re.IGNORECASE):
                assert "secretKeyRef" in m and "value" not in m, (schemas.describe(doc), m)
        if refs:
            assert doc["auth"]["secretStore"] == "kubernetes", schemas.describe(doc)
    for doc in _by_kind(rendered, "Resiliency"):
        assert APP_ID in doc.get("scopes", []), schemas.describe(doc)
    for name, e in _env(rendered).items():
        if re.search(r"USERS|SECRET|TOKEN|PASSWORD", name):
            assert "secretKeyRef" in e.get("valueFrom", {}), f"{name} must come from a Secret"


def test_service_and_budget_select_the_pods(rendered: tuple[schemas.Document, ...]) -> None:
    labels = _pod(rendered)["metadata"]["labels"]
    selector = _one(rendered, "Deployment")["spec"]["selector"]["matchLabels"]
    service = _one(rendered, "Service")
    budget = _one(rendered, "PodDisruptionBudget")
    for wanted in (
        selector,
        service["spec"]["selector"],
        budget["spec"]["selector"]["matchLabels"],
    ):
        assert wanted.items() <= labels.items()
    ports = {p["name"] for p in _worker(rendered)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"console", "metrics"} <= ports
    assert _one(rendered, "Deployment")["spec"]["replicas"] >= 2
