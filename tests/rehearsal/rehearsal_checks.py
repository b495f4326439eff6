"""`make rehearse`: the Helm chart's own manifests, run by a real container engine, pass the rollout scenario.

Not collected by `make test` (the file name does not start with test_): `make rehearse` builds the images
and runs it with pytest. Steps (tests/rehearsal/README.md):

1. A fresh database on the machine's PostgreSQL, a private Redis (the Debian Redis image) on a free port.
2. `helm template` with tests/rehearsal/values.yaml: host networking, the local image, pullPolicy Never.
3. The migrations Job's pod runs first and alone; then every Deployment's replicas (gateway, two hubs, two
   worker sets, Flower) with `podman kube play`; the services wait for the schema instead of migrating.
4. Through the running containers: a job runs on a worker container while a WebSocket client follows it on one
   hub replica; the worker running it is stopped with its grace period (it drains; the job resumes on the other
   worker from its checkpoint); then the hub replica the client is on is stopped (the client resumes on the
   other one): every event arrives once, in order, with no gap.
5. Everything started is removed: pods, containers, secrets, volume, Redis, the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import redis
import websockets

from longrun_common.db import schema_is_current
from longrun_common.settings import Settings
from tests.rehearsal.podman_play import (
    ROOT,
    Deployment,
    PodPlan,
    helm_template,
    logs,
    plan_pods,
    wait_for_exit,
    wait_for_log,
)

# The module's deployment is set up inside the first test's time budget: minutes, not pytest.ini's 120 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
VALUES = ROOT / "tests" / "rehearsal" / "values.yaml"
POSTGRES_SERVER = os.environ.get("LONGRUN_REHEARSE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DEV = {"Authorization": "Bearer dev-key"}
TIMINGS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p + 1 free too: the hub replicas listen on hub.port + i."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def helm_binary() -> str:
    found = shutil.which("helm") or str(ROOT / ".tools" / "bin" / "helm")
    if not os.access(found, os.X_OK):
        pytest.fail("helm not found: run `make helm` (make rehearse does)")
    return found


@dataclass
class Rehearsal:
    release: str
    deployment: Deployment
    plans: dict[str, PodPlan]
    gateway: str
    hubs: list[str]
    flower: str
    database_url: str
    timings: dict[str, float] = field(default_factory=dict)

    def plans_of(self, component: str) -> list[PodPlan]:
        return [plan for plan in self.plans.values() if plan.component == component]


def _wait_http(url: str, timeout: float, container: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"{url} not healthy after {timeout}s:\n{logs(container)[-4000:]}")


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    started = time.monotonic()
    run = uuid.uuid4().hex[:6]
    release = f"rh{run}"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tag = os.environ.get("IMAGE_TAG") or version
    gateway_port, flower_port, redis_port, hub_port = free_port(), free_port(), free_port(), free_port_pair()
    database = f"longrun_rehearse_{run}"
    database_url = POSTGRES_SERVER.rsplit("/", 1)[0] + f"/{database}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    sets: dict[str, str | int] = {
        "image.tag": tag,
        "secrets.databaseUrl": database_url,
        "secrets.redisUrl": redis_url,
        "gateway.port": gateway_port,
        "hub.port": hub_port,
        "flower.port": flower_port,
        "config.key_prefix": release,
        "config.hub_public_url": f"http://127.0.0.1:{hub_port}",
        "storage.existingClaim": f"{release}-files",
    }
    docs = helm_template(helm_binary(), release, VALUES, sets)
    plans = plan_pods(docs, hub_port)
    deployment = Deployment(docs)
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        deployment.run_container(f"{release}-redis", "--network", "host", "localhost/longrun-redis:7", "redis-server",
                                 "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the rehearsal's Redis container does not answer"
                time.sleep(0.2)
        client.close()
        deployment.create_secrets()
        deployment.create_volumes(plans)
        migrations, services = plans[0], plans[1:]
        assert migrations.source.startswith("Job/"), [plan.source for plan in plans]
        t0 = time.monotonic()
        deployment.play(migrations)
        code = wait_for_exit(migrations.containers[0], 180)
        assert code == 0, logs(migrations.containers[0])[-4000:]
        TIMINGS["migrations job"] = time.monotonic() - t0
        t0 = time.monotonic()
        for plan in services:
            deployment.play(plan)
        rehearsal = Rehearsal(
            release, deployment, {plan.name: plan for plan in plans}, f"http://127.0.0.1:{gateway_port}",
            [f"http://127.0.0.1:{hub_port + i}" for i in range(len([p for p in plans if p.component == "hub"]))],
            f"http://127.0.0.1:{flower_port}", database_url,
        )
        _wait_http(rehearsal.gateway + "/healthz", 120, rehearsal.plans_of("gateway")[0].containers[0])
        for url, plan in zip(rehearsal.hubs, rehearsal.plans_of("hub"), strict=True):
            _wait_http(url + "/healthz", 120, plan.containers[0])
        _wait_http(rehearsal.flower + "/healthcheck", 120, rehearsal.plans_of("flower")[0].containers[0])
        for plan in rehearsal.plans_of("worker"):
            wait_for_log(plan.containers[0], " ready.", 120)
        TIMINGS["services up"] = time.monotonic() - t0
        TIMINGS["setup"] = time.monotonic() - started
        yield rehearsal
    finally:
        t0 = time.monotonic()
        problems = deployment.remove_all()
        with contextlib.suppress(psycopg.Error), psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(deployment.workdir, ignore_errors=True)
        TIMINGS["teardown"] = time.monotonic() - t0
        print("\nrehearsal timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
        assert not problems, problems


def test_the_migrations_job_migrated_and_no_service_did(rehearsal: Rehearsal) -> None:
    """One pod ran the migrations (the hook Job's); every service found the schema and only waited for it."""
    assert schema_is_current(Settings(database_url=rehearsal.database_url))
    migrations = next(plan for plan in rehearsal.plans.values() if plan.source.startswith("Job/"))
    job_log = logs(migrations.containers[0])
    assert "Running upgrade" in job_log and "database ready" in job_log, job_log[-3000:]
    for plan in rehearsal.plans.values():
        if plan is migrations:
            continue
        text = logs(plan.containers[0])
        assert "Running upgrade" not in text, f"{plan.name} migrated:\n{text[-3000:]}"
        if plan.component in ("gateway", "worker"):
            assert "migrations left to their own job" in text, f"{plan.name}:\n{text[-3000:]}"


def test_the_pods_run_as_the_chart_says(rehearsal: Rehearsal) -> None:
    """The image under the chart's securityContext: uid 10001, read-only root, the command as PID 1."""
    from tests.rehearsal.podman_play import podman

    gateway = rehearsal.plans_of("gateway")[0].containers[0]
    inspect = json.loads(podman("inspect", "--type", "container", gateway))[0]
    assert inspect["Config"]["User"].split(":")[0] == "10001"
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    status = podman("exec", gateway, "cat", "/proc/1/status")
    assert "CapEff:\t0000000000000000" in status, status  # capabilities: drop ALL
    pid1 = podman("exec", gateway, "cat", "/proc/1/cmdline").replace("\0", " ").strip()
    assert pid1.endswith("-m longrun_gateway"), pid1  # exec form: the service itself gets SIGTERM
    denied = podman("exec", gateway, "sh", "-c", "touch /opt/x 2>&1 || true")
    assert "Read-only file system" in denied, denied


async def _follow(hubs: list[str], current: list[int], job_id: str, token: str, frames: list[dict[str, Any]],
                  hints: list[dict[str, Any]], hub_used: list[int]) -> int | None:
    """A client like client.js: follows the job on hub `current[0]`; on a close other than 1000 it resumes on
    whichever hub `current[0]` names then, with its last seq."""
    while True:
        seqs = [f["seq"] for f in frames if f.get("type") in ("progress", "status")]
        since = f"&since={seqs[-1]}" if seqs else ""
        url = hubs[current[0]].replace("http://", "ws://") + f"/v1/ws/jobs/{job_id}?token={token}{since}"
        hub_used.append(current[0])
        try:
            async with websockets.connect(url, open_timeout=10) as ws:
                try:
                    async for message in ws:
                        frame = json.loads(message)
                        (hints if frame["type"] == "reconnect" else frames).append(frame)
                except websockets.ConnectionClosed:
                    pass
                if ws.close_code == 1000:
                    return ws.close_code
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            pass  # that hub is gone: try the current one again
        await asyncio.sleep(0.2)


def _attempts(database_url: str, job_id: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT number, worker, status FROM attempts WHERE job_id = %s ORDER BY number",
                            (job_id,)).fetchall()
    return [(int(r[0]), str(r[1] or ""), str(r[2])) for r in rows]


async def _until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not after {within}s"
        await asyncio.sleep(0.2)


def test_a_job_survives_a_drained_worker_and_a_stopped_hub_replica(rehearsal: Rehearsal) -> None:
    asyncio.run(_scenario(rehearsal))


async def _scenario(rehearsal: Rehearsal) -> None:
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.post(f"{rehearsal.gateway}/v1/jobs", headers=DEV,
                                   json={"task": "demo.steps", "args": {"steps": 150, "delay": 0.2}})
        assert response.status_code == 202, response.text
        job = response.json()
    job_id, token = job["id"], job["stream"]["token"]
    assert job["stream"]["ws_url"].startswith(rehearsal.hubs[0].replace("http://", "ws://"))

    frames: list[dict[str, Any]] = []
    hints: list[dict[str, Any]] = []
    hub_used: list[int] = []
    current = [0]
    client = asyncio.create_task(_follow(rehearsal.hubs, current, job_id, token, frames, hints, hub_used))

    def progress_count() -> int:
        return len([f for f in frames if f.get("type") == "progress"])

    await _until(lambda: progress_count() >= 10, 90, "progress over the WebSocket from hub replica 0")
    first = _attempts(rehearsal.database_url, job_id)
    assert len(first) == 1 and first[0][2] == "running", first
    worker_set = first[0][1].split("@", 1)[0]  # Celery node name: <set>@<host>
    workers = {plan.name.rsplit("-", 2)[-2]: plan for plan in rehearsal.plans_of("worker")}
    assert worker_set in workers, (first, list(workers))
    running_on = workers[worker_set]

    # 1. Stop the worker running the job, as a scale-down does: SIGTERM, its grace period, then SIGKILL.
    stopped_in = await asyncio.to_thread(rehearsal.deployment.stop, running_on)
    worker_log = logs(running_on.containers[0])
    assert stopped_in < running_on.grace, f"the worker used its whole grace period:\n{worker_log[-4000:]}"
    assert f"asking job {job_id} to checkpoint and requeue" in worker_log, worker_log[-4000:]  # the drain
    await _until(lambda: len(_attempts(rehearsal.database_url, job_id)) >= 2, 60, "the job's second attempt")
    second = _attempts(rehearsal.database_url, job_id)
    assert second[1][1].split("@", 1)[0] != worker_set, second  # resumed on the other worker set
    seen = progress_count()
    await _until(lambda: progress_count() >= seen + 10, 60, "progress from the second worker")

    # 2. Stop the hub replica the client is on: it sends a reconnect frame and closes; the client resumes on the
    #    other replica with its last seq.
    current[0] = 1
    hub0 = rehearsal.plans_of("hub")[0]
    await asyncio.to_thread(rehearsal.deployment.stop, hub0)
    code = await asyncio.wait_for(client, 120)
    assert code == 1000

    async with httpx.AsyncClient(timeout=15) as http:
        final = (await http.get(f"{rehearsal.gateway}/v1/jobs/{job_id}", headers=DEV)).json()
    assert final["status"] == "succeeded", final
    assert final["result"]["resumed_from"] > 0 and final["result"]["attempt"] >= 2, final["result"]
    assert hub_used[0] == 0 and hub_used[-1] == 1, hub_used
    assert [h["reason"] for h in hints] == ["shutdown"], hints
    seqs = [f["seq"] for f in frames if f.get("type") in ("progress", "status")]
    first_seq = frames[0]["seq"] + 1 if frames[0]["type"] == "snapshot" else seqs[0]
    assert seqs == list(range(first_seq, final["seq"] + 1)), (
        f"gap or repeat: missing {sorted(set(range(first_seq, final['seq'] + 1)) - set(seqs))[:20]}, "
        f"repeated {sorted({s for s in seqs if seqs.count(s) > 1})[:20]}")
    TIMINGS["scenario"] = time.monotonic() - t0
    TIMINGS["worker stop (drain)"] = stopped_in
