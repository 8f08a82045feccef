"""The Deployment's pod, as Kubernetes with Dapr's sidecar injector would run it, under podman.

`pod_manifest` takes the resources ``kustomize build deploy/overlays/<backend>`` renders and
makes the Pod that `podman kube play` runs:

- the Deployment's pod template as it is (the worker's container: its image, environment,
  ports, security context, read-only root with the emptyDir on /tmp), with the values of its
  Secrets filled in (a cluster's job) and, for the test stack, its app-id and topics renamed;
- a ``daprd`` container added as Dapr's injector (1.18.2, pkg/injector/patcher) adds it: its
  arguments derived from the ``dapr.io/*`` annotations (app id, port and protocol, config,
  app health checks, graceful shutdown and block-shutdown duration, metrics, JSON logs), the
  injector's ports (3500 HTTP, 50001 gRPC, 50002 internal), ``DAPR_HTTP_PORT`` and
  ``DAPR_GRPC_PORT`` in the worker's environment, its own security context (non-root,
  read-only root, no capabilities) and the ``dapr.io/env`` variables. daprd runs in standalone
  mode from files: the overlay's Components, the base's Configuration and Resiliency, adapted
  to the test stack's Redis (no secret store: the password is empty there). No registry is
  reachable here, so its image is the Debian base and its binary the one the project built
  (``~/.dapr/bin/daprd``), mounted from the host;
- its own network namespace (slirp4netns): the worker and daprd talk over the pod's loopback
  on the manifest's ports, as in a cluster; placement, scheduler and Redis on the host's
  loopback are 10.0.2.2 from inside. The health port is published on a free host port: the
  test is the kubelet (podman's own probe support would need curl in the image).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

HOST = "10.0.2.2"  # the host's loopback, from a pod on slirp4netns with allow_host_loopback
NETWORK = "slirp4netns:allow_host_loopback=true"
# The injector's defaults for the sidecar's own ports (pkg/injector/patcher/sidecar.go).
DAPR_HTTP_PORT, DAPR_GRPC_PORT, DAPR_INTERNAL_GRPC_PORT = 3500, 50001, 50002
SIDECAR_UID = 65532  # the daprd image's user (distroless nonroot)
SIDECAR_DIR = "/dapr"  # where the pod's daprd finds its binary, components and config

Doc = dict[str, Any]


def find(docs: Sequence[Doc], kind: str, name: str | None = None) -> Doc:
    for doc in docs:
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise LookupError(f"no {kind} {name or ''} in the rendered manifests")


def _flag(value: str) -> str:
    return "true" if value.strip().lower() == "true" else "false"


def sidecar_args(annotations: Mapping[str, str], placement: str, scheduler: str) -> list[str]:
    """daprd's arguments as the injector derives them from the pod's ``dapr.io/*``
    annotations (standalone mode: --config and --resources-path are files)."""
    a = annotations
    args = [
        "--mode",
        "standalone",
        "--app-id",
        a["dapr.io/app-id"],
        "--app-port",
        a["dapr.io/app-port"],
        "--app-protocol",
        a.get("dapr.io/app-protocol", "http"),
        "--dapr-http-port",
        str(DAPR_HTTP_PORT),
        "--dapr-grpc-port",
        str(DAPR_GRPC_PORT),
        "--dapr-internal-grpc-port",
        str(DAPR_INTERNAL_GRPC_PORT),
        "--config",
        f"{SIDECAR_DIR}/config/configuration.yaml",
        "--resources-path",
        f"{SIDECAR_DIR}/resources",
        "--placement-host-address",
        placement,
        "--scheduler-host-address",
        scheduler,
        "--log-level",
        a.get("dapr.io/log-level", "info"),
        f"--log-as-json={_flag(a.get('dapr.io/log-as-json', 'false'))}",
        f"--enable-metrics={_flag(a.get('dapr.io/enable-metrics', 'true'))}",
        "--metrics-port",
        a.get("dapr.io/metrics-port", "9090"),
    ]
    if _flag(a.get("dapr.io/enable-app-health-check", "false")) == "true":
        args.append("--enable-app-health-check")
        for key, flag in (
            ("dapr.io/app-health-check-path", "--app-health-check-path"),
            ("dapr.io/app-health-probe-interval", "--app-health-probe-interval"),
            ("dapr.io/app-health-probe-timeout", "--app-health-probe-timeout"),
            ("dapr.io/app-health-threshold", "--app-health-threshold"),
        ):
            if key in a:
                args += [flag, a[key]]
    if "dapr.io/graceful-shutdown-seconds" in a:
        args += ["--dapr-graceful-shutdown-seconds", a["dapr.io/graceful-shutdown-seconds"]]
    if "dapr.io/block-shutdown-duration" in a:
        args += ["--dapr-block-shutdown-duration", a["dapr.io/block-shutdown-duration"]]
    return args


def _sidecar_env(annotations: Mapping[str, str]) -> list[Doc]:
    env = []
    for pair in filter(None, (p.strip() for p in annotations.get("dapr.io/env", "").split(","))):
        name, _, value = pair.partition("=")
        env.append({"name": name, "value": value})
    return env


def _sidecar_resources(annotations: Mapping[str, str]) -> Doc:
    resources: Doc = {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            value = annotations.get(f"dapr.io/sidecar-{resource}-{kind[:-1]}")
            if value:
                resources.setdefault(kind, {})[resource] = value
    return resources


def rename(text: str, app_id: str, topic_prefix: str) -> str:
    """The manifests' app-id and topic names, for a copy that shares the test stack."""
    text = text.replace("workflow-worker", app_id)
    return re.sub(
        r"(?<![\w.])workflow\.(start|approval|control|status|deadletter)\b",
        rf"{topic_prefix}workflow.\1",
        text,
    )


def sidecar_files(
    docs: Sequence[Doc], dest: Path, daprd: Path, redis: str, app_id: str, topic_prefix: str
) -> Path:
    """daprd's binary, Components, Resiliency and Configuration under ``dest`` (readable by
    the sidecar's uid): the rendered ones, for the test stack's Redis at ``redis``."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("resources", "config"):
        (dest / sub).mkdir(exist_ok=True)
    binary = dest / "daprd"
    if not binary.exists():
        try:
            os.link(daprd, binary)
        except OSError:
            shutil.copy2(daprd, binary)
    for doc in docs:
        if doc.get("kind") not in ("Component", "Resiliency", "Configuration"):
            continue
        doc = copy.deepcopy(doc)
        doc.pop("auth", None)  # the secret store of a cluster (Dapr's operator)
        for item in (doc.get("spec") or {}).get("metadata") or []:
            if item.get("name") == "redisHost":
                item["value"] = redis
            if "secretKeyRef" in item:  # the test stack's Redis has no password
                del item["secretKeyRef"]
                item["value"] = ""
        if doc["kind"] == "Configuration":
            # In a cluster the name resolver is Kubernetes' own; standalone daprd defaults to
            # mDNS, so say it (as components/config.yaml does).
            doc["spec"]["nameResolution"] = {
                "component": "kubernetes",
                "version": "v1",
                "configuration": {},
            }
            target = dest / "config" / "configuration.yaml"
        else:
            target = dest / "resources" / f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        target.write_text(rename(yaml.safe_dump(doc, sort_keys=False), app_id, topic_prefix))
    for path in [dest, *dest.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(mode | stat.S_IROTH | stat.S_IRGRP | (stat.S_IXOTH if path.is_dir() else 0))
    return dest


def pod_manifest(
    docs: Sequence[Doc],
    *,
    name: str,
    worker_image: str,
    sidecar_image: str,
    sidecar_dir: Path,
    placement: str,
    scheduler: str,
    secrets: Mapping[str, Mapping[str, str]],
    app_id: str,
    topic_prefix: str,
    health_host_port: int,
) -> Doc:
    """The Pod podman runs: the Deployment's template plus the injected daprd (above)."""
    deployment = find(docs, "Deployment")
    template = yaml.safe_load(
        rename(yaml.safe_dump(deployment["spec"]["template"]), app_id, topic_prefix)
    )
    annotations = template["metadata"]["annotations"]
    spec = template["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "topologySpreadConstraints"):
        spec.pop(key, None)  # cluster scheduling and identity: nothing for podman
    [worker] = [c for c in spec["containers"] if c["name"] == "worker"]
    worker["image"] = worker_image
    for env in worker["env"]:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref:  # what the kubelet does with a Secret
            env.pop("valueFrom")
            env["value"] = secrets[ref["name"]][ref["key"]]
    if topic_prefix:
        worker["env"] += [
            {"name": f"WORKER_{t.upper()}_TOPIC", "value": f"{topic_prefix}workflow.{t}"}
            for t in ("start", "approval", "control", "status")
        ]
    # What the injector adds to the app's container.
    worker["env"] += [
        {"name": "DAPR_HTTP_PORT", "value": str(DAPR_HTTP_PORT)},
        {"name": "DAPR_GRPC_PORT", "value": str(DAPR_GRPC_PORT)},
    ]
    # The kubelet's probes are the test's (through this port); podman's own would exec curl.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        worker.pop(probe, None)
    # podman 4.3's kube play publishes every containerPort on the host (as its own hostPort
    # when none is given), where the host's own daprd and apps may hold them: only the health
    # port is published, on a free host port. Inside the pod every port is reachable anyway.
    worker["ports"] = [
        {**port, "hostPort": health_host_port}
        for port in worker["ports"]
        if port["name"] == "health"
    ]
    sidecar: Doc = {
        "name": "daprd",
        "image": sidecar_image,
        "imagePullPolicy": "Never",
        "command": [f"{SIDECAR_DIR}/daprd"],
        "args": sidecar_args(annotations, placement, scheduler),
        "env": _sidecar_env(annotations),
        "resources": _sidecar_resources(annotations),
        "securityContext": {
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "dapr-sidecar", "mountPath": SIDECAR_DIR, "readOnly": True}],
    }
    spec["containers"].append(sidecar)
    spec.setdefault("volumes", []).append(
        {"name": "dapr-sidecar", "hostPath": {"path": str(sidecar_dir), "type": "Directory"}}
    )
    spec["restartPolicy"] = "Always"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": template["metadata"].get("labels", {}),
            "annotations": annotations,
        },
        "spec": spec,
    }
