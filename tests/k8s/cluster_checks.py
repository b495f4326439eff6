"""`make test-k8s`: install the chart into a real cluster and check it there (see tests/k8s/README.md).

Not part of `make test` (no cluster runs on the build machine; the file name keeps pytest from collecting it
unless it is named on the command line). Needs, in the environment:

    KUBECONFIG                 the cluster (kind, k3d or a real one), with KEDA when the values enable it
    LONGRUN_K8S_VALUES         values file for the install: image, secrets (database, Redis), ingress hosts
    LONGRUN_K8S_GATEWAY_URL    the gateway through the Ingress / HTTPRoute, e.g. http://api.127.0.0.1.nip.io
    LONGRUN_K8S_API_KEY        an API key of the values' secrets.apiKeys (default dev-key)
    LONGRUN_K8S_NAMESPACE      namespace to install into (default: a fresh longrun-k8s-XXXXXX, deleted after)
    LONGRUN_K8S_WORKER_SET     the worker set the load goes to (default: default; it must consume `default`)
    LONGRUN_K8S_KEEP=1         leave the release installed afterwards
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from kubernetes import client, config
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "longrun"
RELEASE = "longrun"
T = TypeVar("T")

pytestmark = pytest.mark.e2e


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: make test-k8s needs a cluster (see tests/k8s/README.md)", pytrace=False)
    return value


def helm(*args: str, timeout: float = 900) -> str:
    from tests.chart.helm import helm as helm_path  # the same helm `make helm` provides

    proc = subprocess.run([helm_path(), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed:\n{proc.stderr}")
    return proc.stdout


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 2.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Cluster:
    namespace: str
    apps: Any  # kubernetes.client.AppsV1Api
    core: Any  # kubernetes.client.CoreV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi
    http: httpx.Client

    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.core.read_namespaced_config_map(f"{RELEASE}-longrun-config",
                                                                     self.namespace).data
        return data

    def deployments(self) -> list[Any]:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        return list(self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items)

    def worker_pods(self, worker_set: str) -> list[Any]:
        selector = f"app.kubernetes.io/instance={RELEASE},longrun.dev/worker-set={worker_set}"
        return [p for p in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
                if p.metadata.deletion_timestamp is None]

    def submit(self, steps: int, delay: float, queue: str = "default") -> dict[str, Any]:
        response = self.http.post("/v1/jobs", json={"task": "demo.steps", "queue": queue,
                                                    "args": {"steps": steps, "delay": delay}})
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    required_env("KUBECONFIG")
    values = required_env("LONGRUN_K8S_VALUES")
    gateway_url = required_env("LONGRUN_K8S_GATEWAY_URL")
    namespace = os.environ.get("LONGRUN_K8S_NAMESPACE") or f"longrun-k8s-{uuid.uuid4().hex[:6]}"
    config.load_kube_config()
    helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace",
         "-f", values, "--wait", "--timeout", "10m")
    api_key = os.environ.get("LONGRUN_K8S_API_KEY", "dev-key")
    http = httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    try:
        yield Cluster(namespace, client.AppsV1Api(), client.CoreV1Api(), client.CustomObjectsApi(), http)
    finally:
        http.close()
        if not os.environ.get("LONGRUN_K8S_KEEP"):
            helm("uninstall", RELEASE, "--namespace", namespace, "--wait")
            if not os.environ.get("LONGRUN_K8S_NAMESPACE"):
                client.CoreV1Api().delete_namespace(namespace)


def test_rollout_completes(cluster: Cluster) -> None:
    """Every Deployment is fully rolled out, the migrations hook succeeded (and was removed) and the gateway is
    ready through the way in."""
    deployments = cluster.deployments()
    assert {d.metadata.labels["app.kubernetes.io/component"] for d in deployments} >= {"gateway", "hub", "worker"}
    for deployment in deployments:
        status, wanted = deployment.status, deployment.spec.replicas or 0
        assert (status.updated_replicas or 0) >= wanted and (status.available_replicas or 0) >= wanted, (
            deployment.metadata.name, status)
    jobs = client.BatchV1Api().list_namespaced_job(cluster.namespace,
                                                   label_selector="app.kubernetes.io/component=migrations")
    assert all((j.status.succeeded or 0) >= 1 for j in jobs.items)  # hook-succeeded deletes it: usually none
    ready = cluster.http.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_a_job_runs_end_to_end_through_the_ingress(cluster: Cluster) -> None:
    """Submit through the gateway's Ingress, follow progress over the hub's WebSocket (its public URL, through
    its Ingress): every seq once, in order, to `succeeded`."""
    job = cluster.submit(steps=20, delay=0.1)
    ws_url = job["stream"]["ws_url"]
    seqs: list[int] = []
    status = job["status"]
    with connect(ws_url, open_timeout=30, close_timeout=5) as socket:
        deadline = time.monotonic() + 180
        while status not in ("succeeded", "failed", "cancelled"):
            frame = json.loads(socket.recv(timeout=max(1.0, deadline - time.monotonic())))
            if frame["type"] == "snapshot":
                seqs.append(frame["seq"])
                status = frame["job"]["status"]
            else:
                seqs.append(frame["seq"])
                status = frame["status"]
    assert status == "succeeded"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert cluster.job(job["id"])["result"]["steps"] == 20


def test_workers_scale_up_under_load_and_drain_on_scale_down(cluster: Cluster) -> None:
    """Load the set's queue beyond one pod: KEDA (or the HPA) adds pods. Then delete the pods running the work,
    as a scale-down does: each drains — running jobs checkpoint and go back to the queue before the grace
    period — and every job still succeeds, resumed from its checkpoint rather than from zero."""
    worker_set = os.environ.get("LONGRUN_K8S_WORKER_SET", "default")
    name = f"{RELEASE}-longrun-worker-{worker_set}"
    deployment = cluster.apps.read_namespaced_deployment(name, cluster.namespace)
    command = deployment.spec.template.spec.containers[0].command
    concurrency = int(next(a for a in command if a.startswith("--concurrency=")).split("=", 1)[1])
    grace = deployment.spec.template.spec.termination_grace_period_seconds
    drain = float(cluster.config().get("LONGRUN_DRAIN_SECONDS", "20"))
    start = len(cluster.worker_pods(worker_set))

    # Each job outlives the drain window, so a drained worker must hand it over mid-way.
    step_delay, steps = 1.0, math.ceil(drain) + 60
    jobs = [cluster.submit(steps=steps, delay=step_delay) for _ in range(concurrency * (start + 2))]
    wait_for(f"{name} to scale above {start} pods", lambda: len(cluster.worker_pods(worker_set)) > start or None,
             timeout=300, interval=5)
    wait_for("jobs running", lambda: sum(cluster.job(j["id"])["status"] == "running" for j in jobs) or None,
             timeout=300, interval=5)

    pods = cluster.worker_pods(worker_set)
    begun = time.monotonic()
    for pod in pods:
        cluster.core.delete_namespaced_pod(pod.metadata.name, cluster.namespace)
    names = {p.metadata.name for p in pods}

    def all_gone() -> bool:
        current = {p.metadata.name for p in cluster.core.list_namespaced_pod(cluster.namespace).items}
        return not (names & current)

    wait_for("the deleted workers to exit", all_gone, timeout=grace + 60, interval=1)
    took = time.monotonic() - begun
    assert took < grace, f"workers took {took:.0f} s to stop: killed at the grace period ({grace} s), not drained"

    finished = wait_for("every job to finish", lambda: (
        [cluster.job(j["id"]) for j in jobs] if all(cluster.job(j["id"])["status"] in
                                                    ("succeeded", "failed", "cancelled") for j in jobs) else None),
        timeout=steps * step_delay * 3 + 300, interval=5)
    assert [j["status"] for j in finished] == ["succeeded"] * len(jobs)
    resumed = [j for j in finished if j["result"]["resumed_from"] > 0]
    assert resumed, "no job was handed over from a checkpoint: the drain did not hand work back"
