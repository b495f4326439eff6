"""Run the chart's rendered workloads with `podman kube play`: the engine side of `make rehearse`.

What podman 4.3 (Debian bookworm) can and cannot take, and what this module does about it:

- `Deployment`: played as its replicas, each a `Pod` named `<deployment>-<i>` with the template's spec
  unchanged — except the hub: under host networking replicas share the host's ports, so replica i listens on
  `hub.port + i` (its own copy of the ConfigMap, with LONGRUN_HUB_PORT changed).
- `Job` (the migrations hook): ignored by podman 4.3, so it is played as the Pod its template describes.
- `Secret`: podman 4.3 reads a secretKeyRef from a podman secret holding a JSON map of base64 values (it
  cannot read the Secret documents it creates itself), so each rendered Secret becomes such a podman secret.
- `ConfigMap`: passed in the same YAML as each pod (envFrom / configMapKeyRef work).
- `containerPort`s under host networking: podman 4.3 refuses them as port mappings; dropped, and probes that
  name a port get its number.
- Annotations longer than 63 characters (the chart's checksum/*): refused by podman 4.3, left out.
- `persistentVolumeClaim`: a podman volume of the claim's name, created here and handed to uid 10001.
- Not exercised (nothing in podman plays them): Service, Ingress / HTTPRoute, NetworkPolicy, PDB, HPA, KEDA
  ScaledObject, ServiceAccount, ServiceMonitor/PodMonitor, readiness gating, preStop hooks.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "images" / "containers.conf"
IMAGE_UID = 10001


def podman(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> str:
    """Run podman with the project's containers.conf; its stdout (stderr joins it in the error)."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    done = subprocess.run(["podman", *args], env=env, input=input, capture_output=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="replace")


def helm_template(helm: str, release: str, values: Path, sets: dict[str, str | int]) -> list[dict[str, Any]]:
    """`helm template` of charts/longrun: every rendered document (hooks included)."""
    argv = [helm, "template", release, str(ROOT / "charts" / "longrun"), "-f", str(values)]
    for key, value in sets.items():
        argv += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass
class PodPlan:
    """One pod to play: where it came from and how long it may take to stop."""

    name: str
    component: str
    manifest: dict[str, Any]
    grace: int = 30
    source: str = ""  # "Deployment/<name>" or "Job/<name>"
    configmaps: list[dict[str, Any]] = field(default_factory=list)  # its own, beside the rendered ones

    @property
    def containers(self) -> list[str]:
        """Names podman gives the pod's containers: `<pod>-<container>`."""
        return [f"{self.name}-{c['name']}" for c in self.manifest["spec"]["containers"]]


def _pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    meta = template.get("metadata", {})
    # podman 4.3 refuses annotation values over 63 characters (a label rule): the chart's checksum/* values
    # (sha256, 64) matter only to a cluster's rollouts, so they stay out.
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if len(str(v)) <= 63}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": dict(meta.get("labels", {})), "annotations": annotations},
           "spec": copy.deepcopy(template["spec"])}
    if pod["spec"].get("hostNetwork"):
        for container in pod["spec"]["containers"]:
            _without_ports(container)
    return pod


def _without_ports(container: dict[str, Any]) -> None:
    """podman 4.3 turns containerPorts into port mappings, which host networking refuses (a cluster just
    publishes them on the node): drop them, after giving the probes that name a port its number."""
    numbers = {entry["name"]: entry["containerPort"] for entry in container.pop("ports", []) if "name" in entry}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        for action in ("httpGet", "tcpSocket"):
            target = container.get(probe, {}).get(action)
            if target and isinstance(target.get("port"), str):
                target["port"] = numbers[target["port"]]


def _own_port(template: dict[str, Any], pod: str, port: int, configmaps: dict[str, Any]) -> list[dict[str, Any]]:
    """Hub replica `pod` listens on `port`: its own copy of the ConfigMaps it reads, with LONGRUN_HUB_PORT
    changed (podman 4.3 lets envFrom win over an `env` entry, so an env override would not do)."""
    copies = []
    for container in template["spec"]["containers"]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if not ref or "LONGRUN_HUB_PORT" not in configmaps[ref["name"]].get("data", {}):
                continue
            own = copy.deepcopy(configmaps[ref["name"]])
            own["metadata"] = {"name": f"{ref['name']}-{pod}"}
            own["data"]["LONGRUN_HUB_PORT"] = str(port)
            ref["name"] = own["metadata"]["name"]
            copies.append(own)
        for entry in container.get("ports", []):
            entry["containerPort"] = port
    return copies


def plan_pods(docs: Iterable[dict[str, Any]], hub_port: int) -> list[PodPlan]:
    """The pods a cluster would run for these documents: the Job's first, then each Deployment's replicas."""
    docs = list(docs)
    configmaps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    plans: list[PodPlan] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind not in ("Deployment", "Job"):
            continue
        template = doc["spec"]["template"]
        component = template["metadata"]["labels"].get("app.kubernetes.io/component", name)
        grace = int(template["spec"].get("terminationGracePeriodSeconds", 30))
        if kind == "Job":
            plans.insert(0, PodPlan(name, component, _pod(name, template), grace, f"Job/{name}"))
            continue
        for index in range(int(doc["spec"].get("replicas", 1))):
            replica, extra = copy.deepcopy(template), []
            if component == "hub" and index:
                extra = _own_port(replica, f"{name}-{index}", hub_port + index, configmaps)
            pod = _pod(f"{name}-{index}", replica)
            plans.append(PodPlan(pod["metadata"]["name"], component, pod, grace, f"Deployment/{name}", extra))
    return plans


@dataclass
class Deployment:
    """Everything one rehearsal created in podman, so that all of it can be removed again."""

    docs: list[dict[str, Any]]
    pods: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="longrun-rehearse-")))

    def create_secrets(self) -> None:
        for doc in self.docs:
            if doc["kind"] != "Secret":
                continue
            data = {key: value for key, value in (doc.get("data") or {}).items()}
            for key, value in (doc.get("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            name = doc["metadata"]["name"]
            podman("secret", "create", name, "-", input=json.dumps(data).encode())
            self.secrets.append(name)

    def create_volumes(self, plans: Iterable[PodPlan]) -> None:
        claims = {volume["persistentVolumeClaim"]["claimName"]
                  for plan in plans for volume in plan.manifest["spec"].get("volumes", [])
                  if "persistentVolumeClaim" in volume}
        for claim in sorted(claims):
            podman("volume", "create", claim)
            self.volumes.append(claim)
            # A cluster's fsGroup makes the volume writable for the pod's group; podman ignores fsGroup.
            podman("run", "--rm", "--network", "none", "-v", f"{claim}:/volume", "--user", "0",
                   "localhost/longrun-base:bookworm", "chown", f"{IMAGE_UID}:{IMAGE_UID}", "/volume")

    def play(self, plan: PodPlan) -> None:
        """`podman kube play` of the pod, with every rendered ConfigMap beside it."""
        configmaps = [doc for doc in self.docs if doc["kind"] == "ConfigMap"]
        path = self.workdir / f"{plan.name}.yaml"
        path.write_text(yaml.safe_dump_all([*configmaps, *plan.configmaps, plan.manifest], sort_keys=False))
        self.pods.append(plan.name)
        podman("kube", "play", str(path), timeout=180)

    def stop(self, plan: PodPlan) -> float:
        """`podman pod stop` with the pod's grace period (SIGTERM, SIGKILL after it); seconds it took."""
        started = time.monotonic()
        podman("pod", "stop", "--time", str(plan.grace), plan.name, timeout=plan.grace + 60)
        return time.monotonic() - started

    def run_container(self, name: str, *args: str) -> None:
        self.containers.append(name)
        podman("run", "-d", "--name", name, *args)

    def remove_all(self) -> list[str]:
        """Remove every pod, container, secret and volume this deployment created; the problems seen."""
        problems = []
        steps: list[tuple[str, ...]] = [("pod", "rm", "--force", "--time", "0", name) for name in reversed(self.pods)]
        steps += [("rm", "--force", "--time", "0", name) for name in self.containers]
        steps += [("secret", "rm", name) for name in self.secrets]
        steps += [("volume", "rm", "--force", name) for name in self.volumes]
        for step in steps:
            try:
                podman(*step)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(str(exc))
        return problems


def logs(container: str) -> str:
    """The container's output, stdout and stderr interleaved as written."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    done = subprocess.run(["podman", "logs", container], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30, check=False)
    return done.stdout.decode(errors="replace")


def container_state(container: str) -> dict[str, Any]:
    out = podman("inspect", "--type", "container", container, "--format", "{{json .State}}", timeout=30)
    state: dict[str, Any] = json.loads(out)
    return state


def wait_for_exit(container: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = container_state(container)
        if state.get("Status") in ("exited", "stopped") and state.get("FinishedAt"):
            return int(state.get("ExitCode", -1))
        time.sleep(0.5)
    raise TimeoutError(f"{container} still running after {timeout}s:\n{logs(container)[-4000:]}")


def wait_for_log(container: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in logs(container):
            return
        if container_state(container).get("Status") == "exited":
            break
        time.sleep(0.5)
    raise TimeoutError(f"{container}: {text!r} not seen after {timeout}s:\n{logs(container)[-4000:]}")
