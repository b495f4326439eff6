"""Redis outages under real processes: a worker survives any number of them, and the first Redis use after
one succeeds in the hub and the gateway (a stale pooled connection is replaced, never reported).

Each test owns a private redis-server on a free port that it stops and starts on the same port.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis
import websockets
from sqlalchemy import Engine

import longrun_worker.tasks  # noqa: F401  (registers the built-in tasks for register_catalog)
from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_worker.catalog import register_catalog
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import TERMINAL_VALUES, close_store, make_store, submit
from tests.support.processes import Service, free_port, service_env
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

BOUNCES = 12
# Quick lease and reaper: a job whose broker message an outage took is sent again within seconds.
FAST = {"LONGRUN_LEASE_SECONDS": "2", "LONGRUN_REAPER_INTERVAL": "0.5"}


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    """PostgreSQL only, as in production: these tests are about Redis and workers, one database is enough."""
    return postgres_database_url


def wait_connections(worker: Service, count: int, timeout: float = 30) -> None:
    """Wait until the worker's consumer has connected to the broker `count` times (Celery logs each one)."""
    deadline = time.monotonic() + timeout
    while worker.logs().count("Connected to redis://") < count:
        assert worker.process is not None and worker.process.poll() is None, worker.logs()[-4000:]
        assert time.monotonic() < deadline, f"no broker connection #{count} after {timeout}s:\n{worker.logs()[-4000:]}"
        time.sleep(0.05)


def wait_ended_in_sql(store: JobStore, ids: list[str], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [store.get(job_id) for job_id in ids]
        if all(job is not None and job.status in TERMINAL_VALUES for job in jobs):
            return [job for job in jobs if job is not None]
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not ended after {timeout}s: {[(j.id, j.status) for j in jobs if j]}")
        time.sleep(0.1)


# Bounded: 12 outages of ~3 s each (Celery reconnects after 2 s), then at most 60 s for the jobs to end.
@pytest.mark.timeout(180)
def test_worker_survives_repeated_redis_outages(services: ServiceFactory, settings: Settings) -> None:
    """Issue 7, defect 6: one outage in 13 ended the worker (kombu: `'NoneType' object has no attribute
    'hostname'` while restoring an unacknowledged message). Bounce Redis under a worker with jobs running."""
    private = RedisServer().start()
    store = make_store(settings.model_copy(update={"redis_url": private.url}))
    rng = random.Random(7)
    try:
        worker = services("worker", "--concurrency", "2", env={"LONGRUN_REDIS_URL": private.url, **FAST})
        ids: list[str] = []
        for bounce in range(BOUNCES):
            wait_connections(worker, bounce + 1)  # each outage finds the consumer connected, not reconnecting
            # When Redis goes, one job is running (acknowledged late: its message is unacknowledged) and the
            # other pool slot is free, so the consumer is waiting in BRPOP: the state in which kombu failed.
            ids.append(submit(store, "demo.steps", {"steps": 20, "delay": 0.1}).id)
            time.sleep(rng.uniform(0.4, 1.0))
            if bounce % 2:  # Redis killed: no goodbye
                assert private.process is not None
                private.process.kill()
                private.process.wait()
                private.process = None
            else:  # Redis shut down: it closes every connection first
                private.stop()
            time.sleep(rng.uniform(0.1, 0.6))
            private.start()
            assert worker.process is not None
            assert worker.process.poll() is None, f"worker exited after outage {bounce + 1}:\n{worker.logs()[-4000:]}"
        wait_connections(worker, BOUNCES + 1)  # back after the last one too
        # SQL is the record: a job that ended before the last outage lost its Redis hash with the rest.
        done = wait_ended_in_sql(store, ids, timeout=60)
        assert [job.status for job in done] == ["succeeded"] * len(ids), [(j.id, j.status, j.error) for j in done]
        assert worker.process.poll() is None, worker.logs()[-4000:]
        logs = worker.logs()
        assert "Unrecoverable error" not in logs
        assert logs.count("Connection to broker lost") >= BOUNCES, logs[-4000:]  # every outage was noticed
        # ... and most found a message to give back: the state in which kombu used to fail.
        assert logs.count("unacknowledged message(s)") >= BOUNCES // 2, logs[-4000:]
    finally:
        close_store(store)
        private.stop()


AUTH = {"Authorization": "Bearer dev-key"}
SOCKETS = 20


async def first_frame(url: str) -> dict[str, Any]:
    """Connect and return the first frame; a close instead (1013: Redis unavailable) fails the test."""
    async with websockets.connect(url, open_timeout=10) as ws:
        try:
            async with asyncio.timeout(10):
                return dict(json.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            raise AssertionError(f"closed {ws.close_code} {ws.close_reason!r} instead of a snapshot") from None


async def test_first_redis_use_after_an_outage_succeeds(services: ServiceFactory, engine: Engine) -> None:
    """Issue 7, defect 8: after Redis came back, the first hub `/readyz` said `"redis": false` and the first
    WebSocket connect closed 1013 — pooled connections to the old server failed their first command. Every
    client must replace such a connection transparently: the first use after an outage succeeds."""
    register_catalog(engine)  # what a worker does at start: the gateway validates submits against it
    private = RedisServer().start()
    try:
        env = {"LONGRUN_REDIS_URL": private.url, "LONGRUN_HUB_REDIS_BACKOFF_MIN": "0.1",
               "LONGRUN_HUB_REDIS_BACKOFF_MAX": "0.2"}
        hub, gateway = services("hub", env=env, wait=False), services("gateway", env=env, wait=False)
        wait_ready(hub, gateway)  # booted side by side
        async with httpx.AsyncClient(timeout=15) as http:
            submitted = await http.post(gateway.url + "/v1/jobs", headers=AUTH,
                                        json={"task": "demo.steps", "args": {"steps": 5}})
            assert submitted.status_code == 202, submitted.text
            job = submitted.json()
            url = f"{hub.url.replace('http://', 'ws://')}/v1/ws/jobs/{job['id']}?token={job['stream']['token']}"
            # Fill the pools: every one of these sockets reads its snapshot on a pooled connection.
            frames = await asyncio.gather(*(first_frame(url) for _ in range(SOCKETS)))
            assert {frame["type"] for frame in frames} == {"snapshot"}
            assert (await http.get(gateway.url + "/readyz")).status_code == 200
            assert (await http.get(hub.url + "/readyz")).status_code == 200

            redis.Redis.from_url(private.url).save()  # the restarted server has the job again
            private.restart()  # same port; returns once the new server answers PING

            # The first use of each pool after the outage: no 503, no 1013, no error.
            ready = await http.get(gateway.url + "/readyz")
            assert ready.json()["checks"]["redis"] == "ok", ready.text
            ready = await http.get(hub.url + "/readyz")
            checks = ready.json().get("checks") or ready.json()["error"]["details"]
            assert checks["redis"] is True, ready.text
            frames = await asyncio.gather(*(first_frame(url) for _ in range(SOCKETS)))
            assert {frame["type"] for frame in frames} == {"snapshot"}
            again = await http.post(gateway.url + "/v1/jobs", headers=AUTH,
                                    json={"task": "demo.steps", "args": {"steps": 5}})
            assert again.status_code == 202, again.text
    finally:
        private.stop()


STOPPING_WORKER = """
import sys
from longrun_common.settings import Settings
from longrun_worker.__main__ import run_worker
from longrun_worker.app import create_worker_app

app = create_worker_app(Settings())
app.conf.broker_connection_retry_on_startup = False  # no broker: the worker stops at once, exit status 1
sys.exit(run_worker(app, ["worker", "--pool", "solo", "--without-mingle", "--without-gossip"]))
"""


def test_a_worker_that_stops_on_an_error_exits_non_zero(sqlite_url: str, key_prefix: str) -> None:
    """Celery's `worker_main` drops the worker's exit status: a worker that ended on an unrecoverable error
    exited 0, and a supervisor that restarts only failures left it down. `python -m longrun_worker` keeps it."""
    env = service_env({"LONGRUN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
                       "LONGRUN_DATABASE_URL": sqlite_url, "LONGRUN_KEY_PREFIX": key_prefix})
    done = subprocess.run([sys.executable, "-c", STOPPING_WORKER], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Shutting down" in done.stdout + done.stderr
