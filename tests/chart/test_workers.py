"""Worker sets: one Deployment and one scaler per set, no replica count under an autoscaler, a grace period
above the drain window, exec-form commands, and a KEDA query that counts exactly the set's work."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm import CHART, RELEASE, HelmError, Manifest, by_kind, containers, named, render_base

pytestmark = pytest.mark.unit

SHELLS = {"sh", "bash", "ash", "dash", "/bin/sh", "/bin/bash", "/usr/bin/env", "env"}


def ci_values(scenario: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / scenario).read_text()) or {}


def worker_sets(scenario: str) -> list[dict[str, Any]]:
    values = ci_values(scenario)
    sets: list[dict[str, Any]] = values.get("workers", {}).get("sets") or yaml.safe_load(
        (CHART / "values.yaml").read_text())["workers"]["sets"]
    return sets


def config_value(manifests: list[Manifest], name: str) -> str | None:
    data: dict[str, str] = named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    return data.get(name)


def worker_deployments(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in by_kind(manifests, "Deployment")
            if m["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"]


@pytest.mark.parametrize("scenario", ["default-values.yaml", "worker-sets-values.yaml", "ingress-values.yaml"])
def test_keda_scales_each_set_and_no_replicas_are_rendered(ci_renders: dict[str, list[Manifest]],
                                                           scenario: str) -> None:
    manifests = ci_renders[scenario]
    deployments = worker_deployments(manifests)
    scaled = by_kind(manifests, "ScaledObject")
    assert len(deployments) == len(worker_sets(scenario)) == len(scaled)
    for deployment in deployments:
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {d["metadata"]["name"] for d in deployments}
    assert not [h for h in by_kind(manifests, "HorizontalPodAutoscaler") if "worker" in h["metadata"]["name"]]
    auth = by_kind(manifests, "TriggerAuthentication")
    assert len(auth) == 1
    for s in scaled:
        (trigger,) = s["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert trigger["authenticationRef"]["name"] == auth[0]["metadata"]["name"]
        assert trigger["metadata"]["targetQueryValue"] == "1"


def test_keda_connection_is_a_libpq_url(ci_renders: dict[str, list[Manifest]]) -> None:
    """KEDA's pgx cannot read SQLAlchemy's `postgresql+psycopg://`: the chart strips the driver."""
    manifests = render_base({"secrets.databaseUrl": "postgresql+psycopg://u:p@db:5432/longrun"})
    secret = named(manifests, "Secret", f"{RELEASE}-longrun")["stringData"]
    assert secret["keda-database-url"] == "postgresql://u:p@db:5432/longrun"
    assert secret["database-url"] == "postgresql+psycopg://u:p@db:5432/longrun"
    with pytest.raises(HelmError, match=r"workers.keda needs PostgreSQL"):
        render_base({"secrets.databaseUrl": "sqlite:///./var/longrun.db"})


def test_hpa_fallback_without_keda(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["keda-off-hpa-values.yaml"]
    assert not by_kind(manifests, "ScaledObject") and not by_kind(manifests, "TriggerAuthentication")
    deployments = worker_deployments(manifests)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(manifests, "HorizontalPodAutoscaler")}
    for deployment in deployments:
        assert "replicas" not in deployment["spec"]
        hpa = hpas[deployment["metadata"]["name"]]
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 75


def test_fixed_replicas_without_any_autoscaler(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["keda-off-fixed-values.yaml"]
    (deployment,) = worker_deployments(manifests)
    assert deployment["spec"]["replicas"] == 3
    assert not by_kind(manifests, "HorizontalPodAutoscaler")
    assert named(manifests, "Deployment", f"{RELEASE}-longrun-hub")["spec"]["replicas"] == 3


def test_replicas_zero_is_kept() -> None:
    manifests = render_base(set_json={"workers.keda.enabled": False, "workers.sets": [
        {"name": "x", "queues": ["default"], "concurrency": 1, "replicas": 0}]})
    assert worker_deployments(manifests)[0]["spec"]["replicas"] == 0


@pytest.mark.parametrize("scenario", ["default-values.yaml", "worker-sets-values.yaml", "redis-in-chart-values.yaml"])
def test_grace_period_exceeds_the_drain_window(ci_renders: dict[str, list[Manifest]], scenario: str) -> None:
    manifests = ci_renders[scenario]
    drain = float(config_value(manifests, "LONGRUN_DRAIN_SECONDS") or 20)  # the Settings default
    for deployment in worker_deployments(manifests):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain + 5, (deployment["metadata"]["name"], grace, drain)


def test_grace_period_follows_drain_seconds_and_margin(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["worker-sets-values.yaml"]  # drain_seconds 60, margin 20, gpu set overrides 900
    graces = {d["metadata"]["labels"]["longrun.dev/worker-set"]:
              d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] for d in worker_deployments(manifests)}
    assert graces == {"fast": 80, "bulk": 80, "gpu": 900}


def test_a_grace_period_inside_the_drain_window_is_refused() -> None:
    with pytest.raises(HelmError, match=r"must exceed drain_seconds"):
        render_base(set_json={"config.drain_seconds": 30, "workers.sets": [
            {"name": "x", "queues": ["default"], "concurrency": 1, "terminationGracePeriodSeconds": 30}]})


def test_commands_are_exec_form_without_a_shell(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, manifests in ci_renders.items():
        for owner, container in containers(manifests):
            command = container.get("command")
            where = f"{scenario}: {owner['metadata']['name']}/{container['name']}"
            assert isinstance(command, list) and command and all(isinstance(a, str) for a in command), where
            assert command[0] not in SHELLS and Path(command[0]).name not in SHELLS, where
            assert "args" not in container, where  # one list, no image ENTRYPOINT/CMD merging surprises


def test_the_configured_queues_are_the_sets_queues(ci_renders: dict[str, list[Manifest]]) -> None:
    """LONGRUN_QUEUES, the queues the gateway accepts jobs for, is every queue some set consumes, in order."""
    assert config_value(ci_renders["default-values.yaml"], "LONGRUN_QUEUES") == "default,high,low"
    assert config_value(ci_renders["worker-sets-values.yaml"], "LONGRUN_QUEUES") == "high,default,low,gpu.render"


def test_queues_served_elsewhere_are_accepted_too() -> None:
    manifests = render_base(set_json={"workers.queuesServedElsewhere": ["reports", "default"]})
    assert config_value(manifests, "LONGRUN_QUEUES") == "default,high,low,reports"
    with pytest.raises(HelmError, match="queuesServedElsewhere"):
        render_base(set_json={"workers.queuesServedElsewhere": ["bad queue"]})
    with pytest.raises(HelmError, match="additional properties 'queues' not allowed"):
        render_base(set_values={"config.queues": "x"})  # the chart derives it from the sets


def test_worker_command_names_queues_concurrency_and_a_unique_node(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["worker-sets-values.yaml"]  # key_prefix lr
    sets = {s["name"]: s for s in worker_sets("worker-sets-values.yaml")}
    for deployment in worker_deployments(manifests):
        name = deployment["metadata"]["labels"]["longrun.dev/worker-set"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:3] == ["python", "-m", "longrun_worker"]
        assert f"--queues={','.join('lr.' + q for q in sets[name]['queues'])}" in command
        assert f"--concurrency={sets[name]['concurrency']}" in command
        assert f"--hostname={name}@%h" in command
        assert command[-len(sets[name].get("extraArgs", [])) or len(command):] == (
            sets[name].get("extraArgs") or [])


QUERY = re.compile(r"^SELECT CEIL\(COUNT\(\*\)::numeric / (\d+)\)::int FROM jobs WHERE queue IN \((.+?)\) "
                   r"AND status IN \('queued', 'running', 'retrying'\) AND \(run_at IS NULL OR run_at <= now\(\)\)$")


def test_trigger_query_names_the_sets_queues_and_concurrency(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["worker-sets-values.yaml"]
    sets = {s["name"]: s for s in worker_sets("worker-sets-values.yaml")}
    for scaled in by_kind(manifests, "ScaledObject"):
        name = scaled["metadata"]["labels"]["longrun.dev/worker-set"]
        match = QUERY.match(scaled["spec"]["triggers"][0]["metadata"]["query"])
        assert match, scaled["spec"]["triggers"][0]["metadata"]["query"]
        assert int(match[1]) == sets[name]["concurrency"]
        assert shlex.split(match[2].replace(",", " ")) == sets[name]["queues"]
        assert scaled["spec"]["minReplicaCount"] == sets[name].get("minReplicas", 1)
        assert scaled["spec"]["maxReplicaCount"] == sets[name]["maxReplicas"]


def test_queue_names_that_could_break_the_query_are_refused() -> None:
    with pytest.raises(HelmError, match=r"queues"):
        render_base(set_json={"workers.sets": [{"name": "x", "queues": ["a') OR ('1'='1"], "concurrency": 1}]})


def test_keda_fallback_only_when_asked(ci_renders: dict[str, list[Manifest]]) -> None:
    for scaled in by_kind(ci_renders["worker-sets-values.yaml"], "ScaledObject"):
        assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    for scaled in by_kind(ci_renders["default-values.yaml"], "ScaledObject"):
        assert "fallback" not in scaled["spec"]
