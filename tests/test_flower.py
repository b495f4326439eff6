"""Flower, started exactly as `make flower` starts it, sees Longrun's workers and tasks.

Longrun's Celery keys live under a kombu `global_keyprefix`; a Flower pointed at the bare broker URL would watch
the unprefixed keys and see nothing. `make flower` runs `scripts/stack.py flower`, which starts Flower with the
Longrun app (`-A longrun_worker.entry:app`), so events, remote control and queue lengths all use the prefix.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from longrun_common.jobs import JobStore
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import make_store, submit, wait_for
from tests.support.processes import Service, free_port, service_env
from tests.support.servers import repo_root

pytestmark = pytest.mark.integration

STACK = repo_root() / "scripts" / "stack.py"


def flower_command() -> list[str]:
    """What `make flower` runs (after installing and starting Redis): `uv run python scripts/stack.py flower`."""
    return [sys.executable, str(STACK), "flower"]


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    store = make_store(settings)
    yield store
    if store.celery is not None:
        store.celery.close()
    store.redis.close()
    store.engine.dispose()


@pytest.fixture
def flower(settings_env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    env = service_env({**settings_env, "FLOWER_PORT": str(port)})
    service = Service("flower", flower_command(), env, tmp_path / "flower.log", port)
    try:
        service.start(ready_path="/healthcheck", timeout=60)
        yield service
    finally:
        service.stop()


def worker_hostname(worker: Service) -> str:
    """The node name the worker was started with (`--hostname NAME@%h`), as Celery expands it."""
    name = worker.argv[worker.argv.index("--hostname") + 1]
    return name.replace("%h", socket.gethostname())


def poll(url: str, check: Any, timeout: float = 30.0, what: str = "", logs: Service | None = None) -> Any:
    """GET `url` until `check(json)` is true; return that JSON."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        body = response.json()
        if check(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{what or url}: not seen after {timeout}s; last answer: {body}\n"
                         f"{logs.logs() if logs else ''}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the SQL backend is not what is tested here
def test_flower_sees_prefixed_workers_and_tasks(
    services: ServiceFactory, flower: Service, store: JobStore
) -> None:
    worker = services("worker")
    hostname = worker_hostname(worker)

    job = submit(store, "demo.steps", {"steps": 3, "delay": 0})
    (done,) = wait_for(store, [job.id], timeout=60)
    assert done.status == "succeeded", done.error

    # Events: the worker's heartbeats (worker-online) and the task's events reach Flower through the prefix.
    poll(f"{flower.url}/api/workers?status=1", lambda body: body.get(hostname) is True,
         what=f"worker {hostname} alive in Flower", logs=flower)
    task_id = f"{job.id}.{job.attempt}"
    tasks = poll(f"{flower.url}/api/tasks", lambda body: body.get(task_id, {}).get("state") == "SUCCESS",
                 what=f"task {task_id} SUCCESS in Flower", logs=flower)
    assert tasks[task_id]["name"] == "demo.steps"
    assert tasks[task_id]["worker"] == hostname

    # Remote control (inspect over the prefixed pidbox): Flower can ask the worker what it consumes.
    workers = poll(f"{flower.url}/api/workers?refresh=1", lambda body: hostname in body,
                   what=f"worker {hostname} answering inspect", logs=flower)
    queues = {queue["name"] for queue in workers[hostname].get("active_queues", [])}
    assert store.keys.queue("default") in queues


def flower_task(flower: Service, task_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    tasks = poll(f"{flower.url}/api/tasks", lambda body: body.get(task_id, {}).get("state") == state,
                 timeout=timeout, what=f"task {task_id} {state} in Flower", logs=flower)
    return dict(tasks[task_id])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_flower_matches_the_job_table(
    services: ServiceFactory, flower: Service, store: JobStore, settings: Settings
) -> None:
    """Succeeded, failed, retried, cancelled (running and queued) and lost jobs: each attempt is its own Celery
    task `{job_id}.{attempt}` and its state in Flower is what the job table says."""
    env = {"LONGRUN_LEASE_SECONDS": "2", "LONGRUN_REAPER_INTERVAL": "0.3"}
    first = services("worker", "--concurrency=1", env=env)

    ok = submit(store, "demo.steps", {"steps": 2})
    bad = submit(store, "demo.steps", {"steps": "many"})
    retried = submit(store, "demo.steps", {"steps": 4, "fail_times": 1})
    wait_for(store, [ok.id, bad.id, retried.id], timeout=60)
    flower_task(flower, f"{ok.id}.1", "SUCCESS")
    failed = flower_task(flower, f"{bad.id}.1", "FAILURE")
    assert "invalid_args" in failed["exception"]
    retry = flower_task(flower, f"{retried.id}.1", "RETRY")
    assert "planned failure" in retry["exception"]
    flower_task(flower, f"{retried.id}.2", "SUCCESS")  # the retry is a task of its own
    assert store.get(retried.id).attempt == 2  # type: ignore[union-attr]

    # A running job shows its latest progress; cancelled, it is a FAILURE saying so. A job cancelled while
    # queued never runs: REVOKED.
    running = submit(store, "demo.steps", {"steps": 100, "delay": 0.1})
    wait_for(store, [running.id], statuses={"running"})
    progress = flower_task(flower, f"{running.id}.1", "PROGRESS")
    assert '"percent"' in str(progress["result"])
    queued = submit(store, "demo.steps", {"steps": 1})
    store.request_cancel(queued.id)
    store.request_cancel(running.id)
    assert [j.status for j in wait_for(store, [running.id, queued.id])] == ["cancelled", "cancelled"]
    cancelled = flower_task(flower, f"{running.id}.1", "FAILURE")
    assert "JobCancelled" in cancelled["exception"]
    flower_task(flower, f"{queued.id}.1", "REVOKED")

    # Its worker killed -9: the reaper ends the lost attempt in Flower too (RETRY), and the next attempt runs
    # elsewhere as `.2`.
    lost = submit(store, "demo.steps", {"steps": 30, "delay": 0.2})
    wait_for(store, [lost.id], statuses={"running"})
    flower_task(flower, f"{lost.id}.1", "PROGRESS")
    first.signal_group(signal.SIGKILL)
    services("worker", "--concurrency=1", env=env)
    (done,) = wait_for(store, [lost.id], timeout=90)
    assert done.status == "succeeded" and done.attempt == 2
    retry = flower_task(flower, f"{lost.id}.1", "RETRY")
    assert "lost" in retry["exception"]
    flower_task(flower, f"{lost.id}.2", "SUCCESS")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_task_events_go_out_in_batches_and_none_is_lost(
    services: ServiceFactory, store: JobStore, settings: Settings
) -> None:
    """The worker's consumer sends its buffered task events a few milliseconds late, so one `task.multi`
    message carries many (longrun_worker/consumer.py): every task's events still arrive, in far fewer messages
    than events (Celery alone sends about one message per event under load)."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(settings.redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(f"*{settings.key_prefix}*celeryev*")
    services("worker", "--concurrency=2")
    jobs = [submit(store, "demo.steps", {"steps": 1, "delay": 0}) for _ in range(30)]
    done = wait_for(store, [job.id for job in jobs], timeout=90)
    assert {job.status for job in done} == {"succeeded"}

    wanted = {f"{job.id}.{job.attempt}" for job in jobs}
    succeeded: set[str] = set()
    messages = events = 0
    deadline = time.monotonic() + 10
    while succeeded != wanted and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message is None:
            continue
        envelope = json.loads(message["data"])
        body = json.loads(base64.b64decode(envelope["body"]) if envelope.get("properties", {}).get(
            "body_encoding") == "base64" else envelope["body"])
        batch = [event for event in (body if isinstance(body, list) else [body])
                 if str(event.get("type", "")).startswith("task-") and event.get("uuid") in wanted]
        if batch:
            messages += 1
            events += len(batch)
            succeeded |= {event["uuid"] for event in batch if event["type"] == "task-succeeded"}
    listener.close()
    client.close()
    assert succeeded == wanted, f"task-succeeded missing for {len(wanted - succeeded)} of {len(wanted)} tasks"
    assert events >= 3 * len(wanted)  # received, started, succeeded of each
    assert messages <= events / 2, f"{events} task events took {messages} messages: not batched"
