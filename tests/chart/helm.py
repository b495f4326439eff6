"""Rendering and validating the chart: helm on PATH (or extracted by scripts/ensure-helm.sh), kubernetes-validate
for the built-in kinds, the vendored CRD schemas (crd_schemas/) for KEDA, Prometheus Operator and Gateway API."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "longrun"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
RELEASE = "rel"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
# Enough for the chart's required values, so a test can vary one thing at a time.
BASE_SET = {
    "secrets.databaseUrl": "postgresql://longrun:secret@db:5432/longrun",
    "secrets.redisUrl": "redis://redis:6379/0",
    "secrets.apiKeys": "acme:acme-key",
    "secrets.tokenSecret": "0123456789abcdef0123456789abcdef",
}

Manifest = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


@functools.cache
def helm() -> str:
    """Path of helm: $HELM, PATH, .tools/bin, else what scripts/ensure-helm.sh installs."""
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(ROOT / ".tools" / "bin" / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    out = subprocess.run([str(ROOT / "scripts" / "ensure-helm.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def run_helm(*args: str) -> str:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def render(values_files: Iterable[Path] = (), set_values: Mapping[str, str] | None = None,
           set_json: Mapping[str, Any] | None = None) -> list[Manifest]:
    """`helm template` with the given values; every non-empty document, hooks included."""
    args = ["template", RELEASE, str(CHART)]
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set-string", f"{key}={value}"]
    for key, value in (set_json or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return [doc for doc in yaml.safe_load_all(run_helm(*args)) if doc]


def render_base(set_values: Mapping[str, str] | None = None, set_json: Mapping[str, Any] | None = None
                ) -> list[Manifest]:
    return render((), {**BASE_SET, **(set_values or {})}, set_json)


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator | None:
    """A validator for a custom resource from its vendored schema (OpenAPI v3 is close to draft 7)."""
    group, _, version = api_version.rpartition("/")
    path = CRD_SCHEMAS / f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
    return jsonschema.Draft7Validator(json.loads(path.read_text())) if path.exists() else None


K8S_SCHEMAS = Path(kubernetes_validate.__file__).resolve().parent / "kubernetes-json-schema"


@functools.cache
def _definitions(version: str) -> Resource[Any]:
    return Resource.from_contents(json.loads((K8S_SCHEMAS / f"v{version}-local-strict" / "_definitions.json")
                                             .read_text()))


@functools.cache
def k8s_validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """kubernetes-validate's strict schema for a built-in kind, as its `validate(strict=True)` uses it — built
    once per kind: the package's own function re-reads 1.8 MB of definitions on every call."""
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1 -> rbac-v1
    path = K8S_SCHEMAS / f"v{version}-local-strict" / f"{kind.lower()}-{group}.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text())
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = _definitions(version) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(manifest: Manifest) -> None:
    """Raise jsonschema.ValidationError when the object is not valid for every Kubernetes version in
    KUBE_VERSIONS (strict: unknown fields are errors), AssertionError when no schema knows its kind."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    validator = crd_validator(api_version, kind)
    if validator is not None:
        validator.validate(manifest)
        return
    for version in KUBE_VERSIONS:
        k8s = k8s_validator(version, api_version, kind)
        if k8s is None:
            raise AssertionError(f"no schema for {api_version} {kind} in Kubernetes {version}: a custom resource "
                                 "needs its CRD vendored with scripts/vendor_crd_schemas.py")
        k8s.validate(manifest)


def by_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    for m in manifests:
        if m["kind"] == kind and m["metadata"]["name"] == name:
            return m
    raise KeyError(f"{kind} {name} not rendered")


def pod_templates(manifests: Iterable[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    """(owner, pod template) of every Deployment and Job."""
    out = []
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            out.append((m, m["spec"]["template"]))
    return out


def containers(manifests: Iterable[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(owner, c) for owner, tpl in pod_templates(manifests)
            for c in tpl["spec"].get("initContainers", []) + tpl["spec"]["containers"]]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
