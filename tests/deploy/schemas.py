"""Offline, strict validation of Kubernetes and Dapr resources against their real schemas.

- Kubernetes kinds: the OpenAPI schemas of the pinned Kubernetes versions
  (``KUBERNETES_SCHEMA_VERSIONS`` in scripts/versions.env), as the ``kubernetes-validate``
  package bundles them, in their strict form (an unknown field is an error).
- Dapr kinds (Component, Configuration, Resiliency, Subscription, ...): the ``openAPIV3Schema``
  of Dapr's CRDs at the pinned runtime, read from the ``github.com/dapr/dapr`` module in the Go
  module cache (``charts/dapr/crds/``; scripts/install-deploy-tools.sh puts it there), made
  strict the way an API server prunes: an object that does not say
  ``x-kubernetes-preserve-unknown-fields`` takes no field its schema does not name. A
  resource's ``metadata`` is checked against Kubernetes' own ObjectMeta.

Nothing is downloaded here, and nothing missing is skipped: a missing tool or module is a
failure that says how to get it (scripts/setup.sh).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

PROJECT = Path(__file__).resolve().parents[2]
DAPR_GROUP = "dapr.io"

Document = dict[str, Any]


def pinned(name: str) -> str:
    """A value pinned in scripts/versions.env (``NAME="value"``)."""
    text = (PROJECT / "scripts" / "versions.env").read_text()
    found = re.search(rf'^{name}="([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{name} is not in scripts/versions.env")
    value = found.group(1)
    default = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)  # "${NAME:-default}", as the shell reads it
    if default is not None:
        return os.environ.get(default.group(1)) or default.group(2)
    return value


def kubernetes_versions() -> list[str]:
    return pinned("KUBERNETES_SCHEMA_VERSIONS").split()


def dapr_version() -> str:
    return pinned("DAPR_RUNTIME_VERSION")


class Missing(RuntimeError):
    """Something the offline validation needs is not on this machine."""


@functools.cache
def go_mod_cache() -> Path:
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    if shutil.which("go"):
        out = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        if out:
            return Path(out)
    return Path.home() / "go" / "pkg" / "mod"


def go_module(path: str, version: str) -> Path:
    """The folder of a Go module in the module cache (``version`` with its ``v``)."""
    folder = go_mod_cache() / f"{path}@{version}"
    if not folder.is_dir():
        raise Missing(
            f"{path}@{version} is not in the Go module cache ({go_mod_cache()}): "
            "run scripts/setup.sh (scripts/install-deploy-tools.sh downloads it)"
        )
    return folder


def dapr_module() -> Path:
    return go_module("github.com/dapr/dapr", f"v{dapr_version()}")


def dapr_requirement(module: str) -> str:
    """The version of ``module`` that daprd's go.mod requires."""
    text = (dapr_module() / "go.mod").read_text()
    found = re.search(rf"^\s*{re.escape(module)} (v\S+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"daprd {dapr_version()}'s go.mod requires no {module}")
    return found.group(1)


# --- YAML -------------------------------------------------------------------------------------


def load_documents(text: str) -> list[Document]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"a YAML document that is not a mapping: {doc!r}")
    return docs


def kustomize() -> str:
    """The pinned kustomize (``KUSTOMIZE`` overrides), built by scripts/install-deploy-tools.sh."""
    if os.environ.get("KUSTOMIZE"):
        return os.environ["KUSTOMIZE"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    exe = cache / "dapr-workflow-worker" / "bin" / "kustomize"
    if not exe.exists():
        raise Missing(f"kustomize is not at {exe}: run scripts/setup.sh")
    version = subprocess.run(
        [str(exe), "version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    wanted = "v" + pinned("KUSTOMIZE_VERSION")
    if version != wanted:
        raise Missing(f"{exe} is kustomize {version}, not {wanted}: run scripts/setup.sh")
    return str(exe)


@functools.cache
def render(overlay: Path) -> tuple[Document, ...]:
    """The resources ``kustomize build <overlay>`` renders (offline)."""
    done = subprocess.run(
        [kustomize(), "build", str(overlay)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize build {overlay} failed:\n{done.stderr}")
    return tuple(load_documents(done.stdout))


def overlays() -> list[Path]:
    return sorted(p.parent for p in (PROJECT / "deploy" / "overlays").glob("*/kustomization.yaml"))


def describe(doc: Document) -> str:
    name = (doc.get("metadata") or {}).get("name", "?")
    return f"{doc.get('kind', '?')}/{name}"


# --- Kubernetes' own kinds ----------------------------------------------------------------------


def _k8s_schema_dir(version: str) -> Any:
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    if not folder.is_dir():
        raise Missing(f"kubernetes-validate bundles no strict schemas for Kubernetes {version}")
    return folder


def validate_kubernetes(doc: Document, version: str) -> list[str]:
    """Errors of a Kubernetes resource against the strict OpenAPI schema of ``version``
    (an empty list: valid). kubernetes-validate reports the first error only."""
    _k8s_schema_dir(version)
    try:
        checked = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{describe(doc)}: no schema: {e.message}"]
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{describe(doc)}: {path}: {e.message} (Kubernetes {e.version})"]
    if checked != version:
        return [f"{describe(doc)}: validated against Kubernetes {checked}, not {version}"]
    return []


@functools.cache
def _k8s_registry(version: str) -> Registry:
    """Kubernetes' strict ObjectMeta with the definitions it refers to."""
    folder = _k8s_schema_dir(version)
    registry: Registry = Registry()
    for name in ("_definitions.json", "objectmeta-meta-v1.json"):
        contents = json.loads((folder / name).read_text())
        registry = registry.with_resource(contents["$id"], Resource.from_contents(contents))
    return registry


OBJECT_META = "https://kubernetes.io/api/objectmeta/meta/v1"


# --- Dapr's kinds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrdVersion:
    kind: str
    version: str
    schema: dict[str, Any]


def strict(schema: Any) -> Any:
    """A copy of a CRD's structural schema in which an object takes no field its schema does
    not name, unless it says ``x-kubernetes-preserve-unknown-fields`` (what an API server
    prunes, a strict check refuses)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    if (
        schema.get("type") == "object"
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def dapr_crds() -> dict[tuple[str, str], CrdVersion]:
    """Dapr's CRDs at the pinned runtime, by (apiVersion, kind), with strict schemas."""
    folder = dapr_module() / "charts" / "dapr" / "crds"
    found: dict[tuple[str, str], CrdVersion] = {}
    for path in sorted(folder.glob("*.yaml")):
        for crd in load_documents(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if not v.get("served"):
                    continue
                schema = strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                schema["properties"]["metadata"] = {"$ref": OBJECT_META}
                api_version = f"{group}/{v['name']}"
                found[(api_version, kind)] = CrdVersion(kind, api_version, schema)
    if not found:
        raise Missing(f"no CustomResourceDefinition in {folder}")
    return found


def validate_dapr(doc: Document, k8s_version: str) -> list[str]:
    """Errors of a Dapr resource against its CRD's strict schema (all of them)."""
    crd = dapr_crds().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is None:
        known = sorted(f"{a} {k}" for a, k in dapr_crds())
        return [f"{describe(doc)}: Dapr {dapr_version()} has no such kind ({', '.join(known)})"]
    validator = jsonschema.Draft202012Validator(crd.schema, registry=_k8s_registry(k8s_version))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [
        f"{describe(doc)}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        f" (Dapr {dapr_version()} CRD)"
        for e in errors
    ]


def validate(doc: Document, k8s_version: str) -> list[str]:
    """Errors of any resource: Dapr's kinds against Dapr's CRDs, the rest against Kubernetes'."""
    if str(doc.get("apiVersion", "")).split("/")[0] == DAPR_GROUP:
        return validate_dapr(doc, k8s_version)
    return validate_kubernetes(doc, k8s_version)
