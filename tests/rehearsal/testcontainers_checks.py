"""The tests' testcontainers path, for real: what a developer with Docker and nothing else runs.

tests/support/servers.py falls back to testcontainers when no Redis/PostgreSQL URL is configured and no
binary exists. No Docker engine runs here, but Podman serves the Docker API (`podman system service`), and
`make images` builds Redis and PostgreSQL images from Debian's packages. This module (run by `make rehearse`,
which builds those images; not collected by `make test`) overrides the suite's `redis_url` and `postgres_url`
with containers started through that path, then runs a job round trip on them with a real worker process.
Ryuk (testcontainers' reaper) is disabled: its image cannot be pulled here; the containers are removed by the
context managers instead, and the test checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from longrun_common.db import migrate
from longrun_common.settings import Settings
from tests.rehearsal.podman_play import CONTAINERS_CONF, podman
from tests.support.jobs import close_store, make_store, submit, wait_for
from tests.support.processes import Service, python_module, service_env
from tests.support.servers import container_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
IMAGES = {"LONGRUN_TEST_REDIS_IMAGE": "localhost/longrun-redis:7",
          "LONGRUN_TEST_POSTGRES_IMAGE": "localhost/longrun-postgres:15"}


def _our_containers() -> list[str]:
    out = podman("ps", "--all", "--format", "json")
    return [c["Names"][0] for c in json.loads(out or "[]") if c.get("Image") in IMAGES.values()
            and c.get("Labels", {}).get("org.testcontainers") == "true"]


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    """Podman's Docker-compatible API on a private socket, and the environment testcontainers reads."""
    folder = Path(tempfile.mkdtemp(prefix="longrun-podman-"))
    socket_path = folder / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        assert service.poll() is None, "podman system service exited"
        assert time.monotonic() < deadline, "podman's API socket did not appear"
        time.sleep(0.1)
    before = set(_our_containers())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER_HOST", f"unix://{socket_path}")
        env.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
        for name, image in IMAGES.items():
            env.setenv(name, image)
        # This machine is itself a container, so testcontainers would guess "Docker in Docker" and look for the
        # bridge network through fields Podman's API does not return; Podman publishes the ports right here.
        env.setenv("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        from testcontainers.core.config import ConnectionMode, testcontainers_config

        # Both are read from the environment once: set them on the config too, in case it was read already.
        env.setattr(testcontainers_config, "_ryuk_disabled", True)
        env.setattr(testcontainers_config, "connection_mode_override", ConnectionMode.docker_host)
        yield f"unix://{socket_path}"
    service.terminate()
    service.wait(30)
    shutil.rmtree(folder, ignore_errors=True)
    left = set(_our_containers()) - before
    assert not left, f"testcontainers left containers behind: {left}"


@pytest.fixture(scope="module")
def redis_url(docker_host: str) -> Iterator[str]:
    with container_url("redis") as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url(docker_host: str) -> Iterator[str]:
    with container_url("postgres") as url:
        migrate(Settings(database_url=url))
        yield url


def test_redis_and_postgres_come_from_containers(redis_url: str, postgres_url: str) -> None:
    """The URLs are the containers' (published ports), not the machine's servers."""
    running = _our_containers()
    assert len(running) >= 2, running
    assert not redis_url.endswith(":6379/0") and ":5432/" not in postgres_url, (redis_url, postgres_url)
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None and str(version[0]).startswith("15."), version


def test_a_job_round_trip_on_the_containers(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    prefix = f"tc{uuid.uuid4().hex[:8]}"
    env = service_env({"LONGRUN_REDIS_URL": redis_url, "LONGRUN_DATABASE_URL": postgres_url,
                       "LONGRUN_KEY_PREFIX": prefix, "LONGRUN_STORAGE_DIR": str(tmp_path / "files")})
    worker = Service("worker", python_module("longrun_worker", "--hostname", f"{prefix}@%h"), env,
                     tmp_path / "worker.log").start()
    store = make_store(Settings(redis_url=redis_url, database_url=postgres_url, key_prefix=prefix))
    try:
        worker.wait_log("ready.", timeout=90)
        job = submit(store, "demo.steps", {"steps": 5, "delay": 0.02})
        [done] = wait_for(store, [job.id], timeout=60)
        assert done.status == "succeeded", (done.status, done.error, worker.logs()[-3000:])
        assert done.result is not None and done.result["steps_run"] == 5
    finally:
        close_store(store)
        with contextlib.suppress(Exception):
            worker.stop()
