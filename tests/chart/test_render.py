"""The chart lints, every ci/*-values.yaml scenario renders, and every object is valid Kubernetes (strict)."""

from __future__ import annotations

import copy
import subprocess
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from .helm import BASE_SET, CHART, CI_VALUES, ROOT, HelmError, Manifest, run_helm, validate

pytestmark = pytest.mark.unit


def test_helm_lint_passes_for_every_scenario() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda path: run_helm("lint", "--strict", str(CHART), "-f", str(path)), CI_VALUES))
    for out in outputs:
        assert "0 chart(s) failed" in out, out


def test_scenarios_cover_the_matrix() -> None:
    names = {p.name for p in CI_VALUES}
    for needed in ("default-values.yaml", "keda-off-hpa-values.yaml", "ingress-values.yaml",
                   "gateway-api-values.yaml", "redis-in-chart-values.yaml", "external-secrets-values.yaml",
                   "worker-sets-values.yaml"):
        assert needed in names


def test_every_rendered_object_is_valid(ci_renders: dict[str, list[Manifest]]) -> None:
    failures = []
    for scenario, manifests in ci_renders.items():
        for manifest in manifests:
            try:
                validate(manifest)
            except (jsonschema.ValidationError, AssertionError) as exc:
                failures.append(f"{scenario}: {manifest['kind']} {manifest['metadata']['name']}: {exc}"[:600])
    assert not failures, "\n".join(failures)


def test_every_custom_kind_is_rendered_and_validated_somewhere(ci_renders: dict[str, list[Manifest]]) -> None:
    kinds = {m["kind"] for manifests in ci_renders.values() for m in manifests}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor", "PrometheusRule",
            "HTTPRoute", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "Job", "PersistentVolumeClaim"} <= kinds


def test_validation_rejects_a_misspelt_field(ci_renders: dict[str, list[Manifest]]) -> None:
    """The strict validators do fail: an unknown field in a Deployment and in a ScaledObject."""
    manifests = ci_renders["default-values.yaml"]
    deployment = copy.deepcopy(next(m for m in manifests if m["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(jsonschema.ValidationError, match=r"comand"):
        validate(deployment)
    scaled = copy.deepcopy(next(m for m in manifests if m["kind"] == "ScaledObject"))
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError, match=r"minReplicas"):
        validate(scaled)
    service = copy.deepcopy(next(m for m in manifests if m["kind"] == "Service"))
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(jsonschema.ValidationError):
        validate(service)


def test_required_values_fail_with_a_message() -> None:
    with pytest.raises(HelmError, match=r"secrets.databaseUrl is required"):
        run_helm("template", "x", str(CHART))
    production_weak_secret = [f"--set-string={k}={v}" for k, v in {**BASE_SET, "secrets.tokenSecret": "short"}.items()]
    with pytest.raises(HelmError, match=r"secrets.tokenSecret must be at least 32 characters"):
        run_helm("template", "x", str(CHART), *production_weak_secret)
    # Production without bootstrap keys renders: its keys live in SQL (`python -m longrun_gateway keys create`).
    run_helm("template", "x", str(CHART), *[f"--set-string={k}={v}" for k, v in BASE_SET.items()
                                            if k != "secrets.apiKeys"])


def test_make_targets_exist() -> None:
    """`make helm`, `make chart-test` and `make test-k8s` exist, and `make test` fetches helm first."""
    for target in ("helm", "chart-test", "test-k8s"):
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False)
        assert done.returncode == 0, f"make -n {target}: {done.stderr}"
    test_rule = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("test:"))
    assert " helm " in test_rule
