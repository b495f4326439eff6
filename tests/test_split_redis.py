"""The Celery broker and the event bus on different Redis servers (LONGRUN_BROKER_URL), and both through Redis
Sentinel: a real gateway and a real worker run a job end to end."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.servers import RedisServer, free_port, wait_for_port
from tests.test_e2e_gateway import follow, submit

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite: the database plays no part in where the Redis traffic goes."""
    return sqlite_url


@pytest.fixture
def private_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    broker, bus = RedisServer().start(), RedisServer().start()
    yield broker, bus
    broker.stop()
    bus.stop()


def _run_one_job(services: ServiceFactory, env: dict[str, str]) -> str:
    gateway = services("gateway", env=env, wait=False)
    worker = services("worker", "--concurrency", "1", env=env, wait=False)
    wait_ready(gateway, worker)  # booted side by side
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        job = submit(http, "demo.steps", {"steps": 3})
        seen = follow(http, job["id"], timeout=60)
    assert seen[-1]["status"] == "succeeded", seen[-1]
    assert seen[-1]["result"]["steps_run"] == 3
    return str(job["id"])


def _keys(url: str, pattern: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in client.scan_iter(pattern))
    finally:
        client.close()


# The servers come before `services` in each signature: pytest tears fixtures down in reverse, so the gateway and
# the worker stop while their Redis still answers (a worker whose Sentinel is gone took 12 s to stop).
def test_broker_and_event_bus_on_two_redis_servers(
    private_redis: tuple[RedisServer, RedisServer], services: ServiceFactory, key_prefix: str
) -> None:
    broker, bus = private_redis
    job_id = _run_one_job(services, {"LONGRUN_REDIS_URL": bus.url, "LONGRUN_BROKER_URL": broker.url})
    # The messages went through the broker server: kombu's queue bindings are there, and nothing of the bus.
    assert _keys(broker.url, f"{key_prefix}:celery:*"), "no broker keys on the broker server"
    assert _keys(broker.url, f"{key_prefix}:job:*") == []
    # The job's snapshot, events and leases are on the bus server, and no broker key.
    assert f"{key_prefix}:job:{job_id}" in _keys(bus.url, f"{key_prefix}:job:*")
    assert _keys(bus.url, f"{key_prefix}:celery:*") == []


@pytest.fixture
def sentinel() -> Iterator[tuple[RedisServer, int]]:
    """A private master and one Sentinel watching it (as `mymaster`), on free ports."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH")
    master = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="longrun-sentinel-"))
    port = free_port()
    conf = workdir / "sentinel.conf"  # Sentinel rewrites its config file, so it must be a writable file
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    process = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield master, port
    finally:
        process.terminate()
        process.wait(10)
        master.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_job_runs_through_sentinel_urls(
    sentinel: tuple[RedisServer, int], services: ServiceFactory, key_prefix: str
) -> None:
    master, port = sentinel
    env = {"LONGRUN_REDIS_URL": f"redis+sentinel://127.0.0.1:{port}/mymaster/0",
           "LONGRUN_BROKER_URL": f"sentinel://127.0.0.1:{port}/mymaster/0"}
    job_id = _run_one_job(services, env)
    # Everything reached the master the Sentinel named.
    assert f"{key_prefix}:job:{job_id}" in _keys(master.url, f"{key_prefix}:job:*")
    assert _keys(master.url, f"{key_prefix}:celery:*")
