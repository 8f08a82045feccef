"""The project's own Dapr resources (components/) against Dapr's CRD schemas at the pinned
runtime, strictly, as a cluster would take them; and what a Resiliency retry really does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy import schemas

COMPONENT_FILES = sorted((schemas.PROJECT / "components").rglob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(schemas.PROJECT)) for p in paths]


def test_every_file_of_components_is_checked() -> None:
    names = _ids(COMPONENT_FILES)
    assert "components/config.yaml" in names
    assert "components/redis/resiliency.yaml" in names
    assert len(names) >= 9, names


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=_ids(COMPONENT_FILES))
@pytest.mark.parametrize("k8s", schemas.kubernetes_versions())
def test_components_fit_daprs_crds(path: Path, k8s: str) -> None:
    docs = schemas.load_documents(path.read_text())
    assert docs, f"{path}: no resource"
    for doc in docs:
        assert str(doc["apiVersion"]).startswith("dapr.io/"), f"{path}: {doc['apiVersion']}"
        assert schemas.validate(doc, k8s) == []


# The two defects the CRD check found (issue 19): both files were accepted by daprd, which
# drops what it does not know, and would have been pruned or refused by a cluster.

OLD_RESILIENCY = """
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: worker-resiliency
spec:
  policies:
    retries:
      redeliver:
        policy: exponential
        initialInterval: 200ms
        maxInterval: 10s
        maxRetries: -1
  targets:
    components:
      pubsub:
        inbound:
          retry: redeliver
"""

OLD_CONFIG = """
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: workflow-worker
spec:
  nameResolution:
    component: kubernetes
"""


def test_a_retry_with_initial_interval_is_refused_by_name() -> None:
    (doc,) = schemas.load_documents(OLD_RESILIENCY)
    errors = schemas.validate(doc, schemas.kubernetes_versions()[0])
    assert len(errors) == 1, errors
    assert "spec.policies.retries.redeliver" in errors[0]
    assert "'initialInterval' was unexpected" in errors[0]


def test_name_resolution_without_version_and_configuration_is_refused() -> None:
    (doc,) = schemas.load_documents(OLD_CONFIG)
    errors = schemas.validate(doc, schemas.kubernetes_versions()[0])
    assert errors == [
        "Configuration/workflow-worker: spec.nameResolution: 'configuration' is a required "
        f"property (Dapr {schemas.dapr_version()} CRD)",
        "Configuration/workflow-worker: spec.nameResolution: 'version' is a required "
        f"property (Dapr {schemas.dapr_version()} CRD)",
    ]


def test_unknown_fields_are_refused_everywhere_the_crd_does_not_keep_them() -> None:
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "pubsub", "nmae": "typo"},
        "scope": ["workflow-worker"],
        "spec": {
            "type": "pubsub.redis",
            "version": "v1",
            "metadata": [
                {"name": "redisHost", "value": {"any": ["shape"]}},  # kept: preserve-unknown
                {"name": "redisPassword", "secretKeyRef": {"name": "s", "namespace": "x"}},
            ],
        },
    }
    errors = schemas.validate(doc, schemas.kubernetes_versions()[-1])
    assert len(errors) == 3, errors
    assert "(root): Additional properties are not allowed ('scope' was unexpected)" in errors[0]
    assert "metadata: Additional properties are not allowed ('nmae'" in errors[1]
    assert "spec.metadata.1.secretKeyRef: Additional properties are not allowed" in errors[2]


def test_a_kind_dapr_does_not_have_is_refused() -> None:
    doc = {"apiVersion": "dapr.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "w"}}
    (error,) = schemas.validate(doc, schemas.kubernetes_versions()[0])
    assert "has no such kind" in error


# What the retry policy does: daprd builds it from dapr/kit's retry defaults, into which only
# the fields of Dapr's Retry type are decoded; the exponential policy's start, randomization
# and multiplier are cenkalti/backoff's defaults. Read from the sources at the versions
# daprd's go.mod requires, and held against what components/ and docs/concepts/messages.md say.


def _go_duration(expr: str) -> float:
    """Seconds of a Go constant expression such as ``500 * time.Millisecond``."""
    units = {"time.Millisecond": 0.001, "time.Second": 1.0, "time.Minute": 60.0}
    number, unit = (part.strip() for part in expr.split("*"))
    return float(number) * units[unit]


def _backoff_defaults() -> dict[str, str]:
    module = schemas.go_module(
        "github.com/cenkalti/backoff/v4", schemas.dapr_requirement("github.com/cenkalti/backoff/v4")
    )
    text = (module / "exponential.go").read_text()
    return dict(re.findall(r"^\s*(Default\w+)\s*=\s*(.+?)\s*$", text, re.MULTILINE))


def test_daprs_retry_type_has_no_initial_interval() -> None:
    types = schemas.dapr_module() / "pkg" / "apis" / "resiliency" / "v1alpha1" / "types.go"
    body = re.search(r"type Retry struct \{(.*?)\n\}", types.read_text(), re.DOTALL)
    assert body is not None
    fields = re.findall(r'json:"(\w+)', body.group(1))
    assert fields == ["policy", "duration", "maxInterval", "maxRetries", "matching"]


def test_the_first_retry_interval_is_dapr_kits_default() -> None:
    kit = schemas.go_module("github.com/dapr/kit", schemas.dapr_requirement("github.com/dapr/kit"))
    retry = (kit / "retry" / "retry.go").read_text()
    default = re.search(r"func DefaultConfig\(\) Config \{(.*?)\n\}", retry, re.DOTALL)
    assert default is not None
    assert "InitialInterval:     backoff.DefaultInitialInterval," in default.group(1)
    assert "RandomizationFactor: backoff.DefaultRandomizationFactor," in default.group(1)
    assert "Multiplier:          backoff.DefaultMultiplier," in default.group(1)
    assert "MaxElapsedTime:      backoff.DefaultMaxElapsedTime," in default.group(1)
    resiliency = (schemas.dapr_module() / "pkg" / "resiliency" / "resiliency.go").read_text()
    assert "rc := retry.DefaultConfig()" in resiliency  # each policy starts from those

    found = _backoff_defaults()
    assert _go_duration(found["DefaultInitialInterval"]) == 0.5
    assert float(found["DefaultRandomizationFactor"]) == 0.5
    assert float(found["DefaultMultiplier"]) == 1.5
    assert _go_duration(found["DefaultMaxElapsedTime"]) == 15 * 60

    said = "first retry after 500 ms +/- 50 % (250-750 ms), each next interval x1.5"
    for path in sorted((schemas.PROJECT / "components").glob("*/resiliency.yaml")):
        assert said in " ".join(path.read_text().replace("#", " ").split()), path
    page = " ".join((schemas.PROJECT / "docs" / "concepts" / "messages.md").read_text().split())
    assert "500 ms ± 50 %" in page
