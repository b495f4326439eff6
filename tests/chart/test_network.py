"""Ingress / HTTPRoute for the hub keep WebSockets open; NetworkPolicies select real pods and let only the
gateway, hub and Flower take outside traffic, while workers reach only DNS, Redis and the database."""

from __future__ import annotations

from typing import Any

import pytest

from .helm import RELEASE, Manifest, by_kind, named, pod_templates

pytestmark = pytest.mark.unit


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the chart uses matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pods_labels(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: t["metadata"]["labels"] for o, t in pod_templates(manifests)}


def component(labels: dict[str, str]) -> str:
    return labels["app.kubernetes.io/component"]


def test_every_policy_selects_pods(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, manifests in ci_renders.items():
        pods = pods_labels(manifests)
        for policy in by_kind(manifests, "NetworkPolicy"):
            selected = [n for n, labels in pods.items() if matches(policy["spec"]["podSelector"], labels)]
            assert selected, f"{scenario}: {policy['metadata']['name']} selects no pod"
            for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
                for peer in rule.get("from", []) + rule.get("to", []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        assert [n for n, labels in pods.items() if matches(peer["podSelector"], labels)], (
                            f"{scenario}: a peer of {policy['metadata']['name']} selects no pod")


def test_only_gateway_hub_and_flower_accept_outside_traffic(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["ingress-values.yaml"]
    pods = pods_labels(manifests)
    policies = by_kind(manifests, "NetworkPolicy")
    default_deny = named(manifests, "NetworkPolicy", f"{RELEASE}-longrun-default-deny")
    assert default_deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in default_deny["spec"]
    for name, labels in pods.items():
        assert matches(default_deny["spec"]["podSelector"], labels), f"{name} escapes the default deny"
        allowed = [rule for p in policies if matches(p["spec"]["podSelector"], labels)
                   for rule in p["spec"].get("ingress", [])]
        if component(labels) in ("gateway", "hub", "flower"):
            assert allowed == [{"ports": [{"port": "http", "protocol": "TCP"}]}], name
        elif component(labels) == "worker":
            assert allowed == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}], name  # metrics enabled here
        else:
            assert allowed == [], name


def test_ingress_peers_can_be_restricted(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["external-secrets-values.yaml"]
    policy = named(manifests, "NetworkPolicy", f"{RELEASE}-longrun-hub")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


@pytest.mark.parametrize(("scenario", "redis_port", "db_port"), [
    ("default-values.yaml", 6379, 5432), ("external-secrets-values.yaml", 6380, 5432),
    ("redis-in-chart-values.yaml", 6379, 5432)])
def test_workers_reach_only_dns_redis_and_the_database(ci_renders: dict[str, list[Manifest]], scenario: str,
                                                       redis_port: int, db_port: int) -> None:
    manifests = ci_renders[scenario]
    policy = named(manifests, "NetworkPolicy", f"{RELEASE}-longrun-worker")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # Nothing reaches a worker but a metrics scrape (on by default).
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    ports = [[(p["port"], p["protocol"]) for p in rule["ports"]] for rule in policy["spec"]["egress"]]
    assert ports == [[(53, "UDP"), (53, "TCP")], [(redis_port, "TCP")], [(db_port, "TCP")]]
    dns, redis, database = policy["spec"]["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    pods = pods_labels(manifests)
    if scenario == "redis-in-chart-values.yaml":
        (peer,) = redis["to"]
        assert [component(labels) for labels in pods.values() if matches(peer["podSelector"], labels)] == ["redis"]
    elif scenario == "external-secrets-values.yaml":
        assert redis["to"] == [{"ipBlock": {"cidr": "10.30.0.0/16"}}]
        assert database["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    else:
        assert "to" not in redis and "to" not in database  # any address, these ports only


def test_in_chart_redis_takes_only_the_releases_pods(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["redis-in-chart-values.yaml"]
    policy = named(manifests, "NetworkPolicy", f"{RELEASE}-longrun-redis")
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "longrun",
                                                    "app.kubernetes.io/instance": RELEASE}}}


def test_hub_ingress_keeps_websockets_open(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["ingress-values.yaml"]
    hub = named(manifests, "Ingress", f"{RELEASE}-longrun-hub")
    annotations = hub["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    gateway = named(manifests, "Ingress", f"{RELEASE}-longrun-gateway")
    assert "nginx.ingress.kubernetes.io/proxy-read-timeout" not in gateway["metadata"]["annotations"]
    assert hub["spec"]["tls"] == [{"hosts": ["stream.example.com"], "secretName": "stream-tls"}]
    config = named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    assert config["LONGRUN_HUB_PUBLIC_URL"] == "https://stream.example.com"


def test_routes_point_at_rendered_services(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario in ("ingress-values.yaml", "gateway-api-values.yaml"):
        manifests = ci_renders[scenario]
        services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
                    for s in by_kind(manifests, "Service")}
        backends = [p["backend"]["service"] for i in by_kind(manifests, "Ingress")
                    for rule in i["spec"]["rules"] for p in rule["http"]["paths"]]
        backends += [{"name": b["name"], "port": {"number": b["port"]}} for r in by_kind(manifests, "HTTPRoute")
                     for rule in r["spec"]["rules"] for b in rule["backendRefs"]]
        assert len(backends) == 3, scenario  # gateway, hub, Flower
        for backend in backends:
            assert backend["port"]["number"] in services[backend["name"]], (scenario, backend)
        for service in by_kind(manifests, "Service"):
            assert "sessionAffinity" not in service["spec"]  # no sticky sessions


def test_hub_route_has_no_request_timeout(ci_renders: dict[str, list[Manifest]]) -> None:
    manifests = ci_renders["gateway-api-values.yaml"]
    hub = named(manifests, "HTTPRoute", f"{RELEASE}-longrun-hub")
    assert hub["spec"]["rules"][0]["timeouts"] == {"request": "0s"}
    assert hub["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]
    assert "timeouts" not in named(manifests, "HTTPRoute", f"{RELEASE}-longrun-gateway")["spec"]["rules"][0]
    config = named(manifests, "ConfigMap", f"{RELEASE}-longrun-config")["data"]
    assert config["LONGRUN_HUB_PUBLIC_URL"] == "https://stream.example.com"


def test_extra_worker_egress_is_appended(ci_renders: dict[str, list[Manifest]]) -> None:
    egress = named(ci_renders["ingress-values.yaml"], "NetworkPolicy", f"{RELEASE}-longrun-worker")["spec"]["egress"]
    assert len(egress) == 4
    assert egress[-1]["ports"] == [{"port": 4317, "protocol": "TCP"}]
