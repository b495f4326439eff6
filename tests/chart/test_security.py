"""Every Longrun pod runs non-root with a read-only root filesystem, no privilege escalation, no capabilities,
the runtime's seccomp profile and no service account token; writable paths are volumes."""

from __future__ import annotations

from typing import Any

import pytest

from .helm import Manifest, containers, pod_templates, render_base

pytestmark = pytest.mark.unit


def longrun_pods(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(o, t) for o, t in pod_templates(manifests) if o["metadata"]["labels"]["app.kubernetes.io/component"]
            != "redis"]


def test_pod_security_context(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, manifests in ci_renders.items():
        for owner, template in pod_templates(manifests):
            spec = template["spec"]
            where = f"{scenario}: {owner['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] != 0, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where


def test_container_security_context(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, manifests in ci_renders.items():
        for owner, container in containers(manifests):
            ctx = container["securityContext"]
            where = f"{scenario}: {owner['metadata']['name']}/{container['name']}"
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in ctx or ctx["privileged"] is False, where


def test_writable_paths_are_volumes(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, manifests in ci_renders.items():
        for owner, template in longrun_pods(manifests):
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            assert volumes["tmp"]["emptyDir"], scenario
            for container in template["spec"]["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert mounts["/tmp"] == "tmp", (scenario, owner["metadata"]["name"])
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["HOME"] == "/tmp" and env["PYTHONDONTWRITEBYTECODE"] == "1"
            component = owner["metadata"]["labels"]["app.kubernetes.io/component"]
            if component in ("gateway", "worker"):  # uploads: written by the gateway, read by tasks
                (container,) = template["spec"]["containers"]
                assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["storage"] == "/data/files"


def test_storage_is_one_claim_shared_by_gateway_and_workers(ci_renders: dict[str, list[Manifest]]) -> None:
    for scenario, claim in (("external-secrets-values.yaml", "longrun-files"),
                            ("redis-in-chart-values.yaml", "rel-longrun-files")):
        pods = [(o, t) for o, t in longrun_pods(ci_renders[scenario])
                if o["metadata"]["labels"]["app.kubernetes.io/component"] in ("gateway", "worker")]
        assert pods
        for _, template in pods:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == claim


def test_service_account_is_not_mounted_and_can_be_external() -> None:
    manifests = render_base(set_json={"serviceAccount": {"create": False, "name": "runtime"}})
    assert not [m for m in manifests if m["kind"] == "ServiceAccount"]
    for owner, template in pod_templates(manifests):
        if owner["kind"] == "Deployment" and "redis" not in owner["metadata"]["name"]:
            assert template["spec"]["serviceAccountName"] == "runtime"
