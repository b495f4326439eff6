"""Gateway, hub, Flower, the migrations hook and the in-chart Redis: probes, drains, budgets, autoscalers."""

from __future__ import annotations

from typing import Any

import pytest

from .helm import RELEASE, Manifest, by_kind, env_of, named, render_base

pytestmark = pytest.mark.unit


def container(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = named(manifests, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return found


@pytest.mark.parametrize("name", ["gateway", "hub"])
def test_http_services_have_probes_pdb_and_resources(ci_renders: dict[str, list[Manifest]], name: str) -> None:
    manifests = ci_renders["default-values.yaml"]
    c = container(manifests, "Deployment", f"{RELEASE}-longrun-{name}")
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    pdb = named(manifests, "PodDisruptionBudget", f"{RELEASE}-longrun-{name}")
    labels = named(manifests, "Deployment", f"{RELEASE}-longrun-{name}")["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())


def test_hub_drains_before_it_is_killed(ci_renders: dict[str, list[Manifest]]) -> None:
    """preStop pause (endpoints let go), then SIGTERM (readiness fails, sockets close with 1012 and get
    hub_shutdown_grace): the grace period covers both."""
    for scenario, grace_setting, expected in (("default-values.yaml", 5, 20), ("redis-in-chart-values.yaml", 8, 23)):
        manifests = ci_renders[scenario]
        spec = named(manifests, "Deployment", f"{RELEASE}-longrun-hub")["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == ["python", "-c", "import time; time.sleep(5)"]
        assert spec["terminationGracePeriodSeconds"] == expected
        assert spec["terminationGracePeriodSeconds"] > 5 + grace_setting


def test_hub_scales_on_cpu_and_has_no_replica_count(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["default-values.yaml"]
    hub = named(manifests, "Deployment", f"{RELEASE}-longrun-hub")
    assert "replicas" not in hub["spec"]
    hpa = named(manifests, "HorizontalPodAutoscaler", f"{RELEASE}-longrun-hub")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_ports_reach_the_settings(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["hostnetwork-values.yaml"]
    config = named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    assert (config["LONGRUN_GATEWAY_PORT"], config["LONGRUN_HUB_PORT"]) == ("18000", "18001")
    assert config["LONGRUN_BIND_HOST"] == "127.0.0.1"
    for name, port in (("gateway", 18000), ("hub", 18001), ("flower", 15555)):
        deployment = named(manifests, "Deployment", f"{RELEASE}-longrun-{name}")
        assert deployment["spec"]["template"]["spec"]["hostNetwork"] is True
        assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == port
        assert deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    flower = container(manifests, "Deployment", f"{RELEASE}-longrun-flower")
    assert flower["command"][-2:] == ["--address=127.0.0.1", "--port=15555"]
    assert env_of(flower)["FLOWER_UNAUTHENTICATED_API"] == "true"


def test_flower_probes_and_basic_auth(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["ingress-values.yaml"]
    c = container(manifests, "Deployment", f"{RELEASE}-longrun-flower")
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert c["resources"]["limits"]["memory"]
    assert named(manifests, "PodDisruptionBudget", f"{RELEASE}-longrun-flower")["spec"]["maxUnavailable"] == 1
    assert c["command"][:6] == ["python", "-m", "celery", "-A", "longrun_worker.entry:app", "flower"]
    env = env_of(c)
    assert env["FLOWER_BASIC_AUTH"] == {"secretKeyRef": {"name": f"{RELEASE}-longrun", "key": "flower-basic-auth",
                                                         "optional": True}}
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert not [d for d in by_kind(ci_renders["keda-off-fixed-values.yaml"], "Deployment") if "flower" in
                d["metadata"]["name"]]


def test_migrations_run_once_in_a_hook_before_the_pods(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["default-values.yaml"]
    job = named(manifests, "Job", f"{RELEASE}-longrun-migrations")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and "serviceAccountName" not in spec  # ours does not exist yet
    (c,) = spec["containers"]
    assert c["command"] == ["python", "-m", "longrun_common.db"]
    # The hook reads hook copies of the ConfigMap and Secret, created before it (lower weight).
    assert c["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-longrun-migrations"}}]
    assert env_of(c)["LONGRUN_DATABASE_URL"]["secretKeyRef"]["name"] == f"{RELEASE}-longrun-migrations"
    for kind in ("ConfigMap", "Secret"):
        copy = named(manifests, kind, f"{RELEASE}-longrun-migrations")["metadata"]["annotations"]
        assert copy["helm.sh/hook"] == annotations["helm.sh/hook"]
        assert int(copy["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    hook_data = named(manifests, "ConfigMap", f"{RELEASE}-longrun-migrations")["data"]
    assert hook_data == named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    # The services then leave migrating to the Job.
    assert hook_data["LONGRUN_MIGRATE_ON_START"] == "false"


def test_migrations_with_an_existing_secret_read_it(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["external-secrets-values.yaml"]
    assert not [s for s in by_kind(manifests, "Secret")]
    c = container(manifests, "Job", f"{RELEASE}-longrun-migrations")
    assert env_of(c)["LONGRUN_DATABASE_URL"] == {"secretKeyRef": {"name": "longrun-credentials",
                                                                 "key": "DATABASE_URL"}}
    assert named(manifests, "TriggerAuthentication", f"{RELEASE}-longrun-worker-db")["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "longrun-credentials", "key": "KEDA_DATABASE_URL"}]


def test_in_chart_redis_is_wired(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["redis-in-chart-values.yaml"]
    secret = named(manifests, "Secret", f"{RELEASE}-longrun")["stringData"]
    assert secret["redis-url"] == f"redis://{RELEASE}-longrun-redis:6379/0"
    assert named(manifests, "Service", f"{RELEASE}-longrun-redis")["spec"]["ports"][0]["port"] == 6379
    assert not [d for d in by_kind(ci_renders["default-values.yaml"], "Deployment") if "redis" in
                d["metadata"]["name"]]


def test_development_secrets_are_optional_production_ones_are_not() -> None:
    dev = render_base({"config.env": "development", "secrets.apiKeys": "", "secrets.tokenSecret": ""})
    env = env_of(container(dev, "Deployment", f"{RELEASE}-longrun-gateway"))
    assert env["LONGRUN_API_KEYS"]["secretKeyRef"]["optional"] is True
    assert "api-keys" not in named(dev, "Secret", f"{RELEASE}-longrun")["stringData"]
    prod = render_base()
    env = env_of(container(prod, "Deployment", f"{RELEASE}-longrun-gateway"))
    assert env["LONGRUN_API_KEYS"]["secretKeyRef"]["optional"] is False
    assert env["LONGRUN_TOKEN_SECRET"]["secretKeyRef"]["optional"] is False


@pytest.mark.parametrize("name", ["gateway", "hub"])
def test_replicas_spread_over_nodes(ci_renders: dict[str, list[Manifest]], name: str) -> None:
    deployment = named(ci_renders["default-values.yaml"], "Deployment", f"{RELEASE}-longrun-{name}")
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in spread["labelSelector"]["matchLabels"].items())


def test_monitoring_ships_the_tested_alerts_and_dashboard(ci_renders: dict[str, list[Manifest]]) -> None:
    """The PrometheusRule and dashboard ConfigMap carry the files promtool and the Prometheus test check."""
    import json
    from pathlib import Path

    import yaml

    chart = Path(__file__).resolve().parents[2] / "charts" / "longrun"
    manifests = ci_renders["ingress-values.yaml"]
    rule = named(manifests, "PrometheusRule", f"{RELEASE}-longrun")
    shipped = yaml.safe_load((chart / "files" / "prometheus-rules.yaml").read_text())["groups"]
    assert rule["spec"]["groups"] == shipped
    assert "{{ $labels" in json.dumps(shipped)  # Prometheus templates reach Prometheus untouched
    dashboards = named(manifests, "ConfigMap", f"{RELEASE}-longrun-dashboards")
    assert json.loads(dashboards["data"]["longrun.json"]) == json.loads((chart / "dashboards" / "longrun.json")
                                                                         .read_text())
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_workers_serve_metrics_on_the_podmonitor_port(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["ingress-values.yaml"]
    c = container(manifests, "Deployment", f"{RELEASE}-longrun-worker-default")
    assert env_of(c)["LONGRUN_WORKER_METRICS_PORT"] == "9808"
    assert {"name": "metrics", "containerPort": 9808, "protocol": "TCP"} in c["ports"]
    monitor = named(manifests, "PodMonitor", f"{RELEASE}-longrun-worker")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
