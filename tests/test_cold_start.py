"""Cold start: services started at the same moment, on a fresh database, all come up (what every rollout does).

The e2e test runs `make gateway`, `make worker` and `make hub` at once, as a new user would in three terminals:
each one syncs the environment (under a lock), migrates (under the SQLite file lock or PostgreSQL's advisory
lock) and starts. The gateway may be up before any worker registered the catalog: a submit then answers 503
with Retry-After, and the client retries. The other tests pin the locks themselves: while one holder has the
lock, a second installer / migrator waits, and finds the work done when it gets the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from longrun_common.db import schema_is_current
from longrun_common.settings import Settings
from tests.support.processes import free_port, service_env
from tests.support.servers import repo_root
from tests.test_commands import processes_with_env

ROOT = repo_root()
DEV = {"Authorization": "Bearer dev-key"}


@contextlib.contextmanager
def fresh_database(kind: str, tmp_path: Path, postgres_server: str | None) -> Iterator[str]:
    """An empty database nobody has migrated: a new SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'longrun.db'}"  # not even its folder exists yet
        return
    assert postgres_server is not None
    name = f"longrun_cold_{os.getpid()}_{int(time.time() * 1000)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_make(target: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["make", target], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _logs(logs: dict[str, Path]) -> str:
    return "\n".join(f"--- make {name}\n{path.read_text(errors='replace')[-3000:]}" for name, path in logs.items())


def _wait_healthy(url: str, makes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in makes.items():
            if process.poll() is not None:
                raise AssertionError(f"make {name} exited with {process.returncode}\n{_logs(logs)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout}s\n{_logs(logs)}")


def _submit_until_accepted(gateway: str, timeout: float) -> tuple[dict[str, object], list[int]]:
    """Submit the way a client should: a 503 with Retry-After (catalog not registered yet) is retried."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(f"{gateway}/v1/jobs", headers=DEV, timeout=10,
                              json={"task": "demo.steps", "args": {"steps": 3, "delay": 0.05}})
        seen.append(response.status_code)
        if response.status_code == 202:
            return response.json(), seen
        assert response.status_code == 503, response.text  # never a 422 "unknown task" on a fresh start
        assert response.headers["Retry-After"] == "5"
        assert response.json()["error"]["details"]["dependency"] == "catalog"
        assert time.monotonic() < deadline, f"still {response.status_code} after {timeout}s: {response.text}"
        time.sleep(0.5)  # quicker than Retry-After: the test wants to see the moment the worker registers


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_make_gateway_worker_and_hub_started_together_on_a_fresh_database(
    kind: str, redis_url: str, key_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = None
    if kind == "postgresql":
        server = request.getfixturevalue("postgres_url").rsplit("/", 1)[0] + "/postgres"
    with fresh_database(kind, tmp_path, server) as database_url:
        env = service_env({
            "LONGRUN_REDIS_URL": redis_url,
            "LONGRUN_DATABASE_URL": database_url,
            "LONGRUN_KEY_PREFIX": key_prefix,  # also marks every process started (the sweep below)
            "LONGRUN_STORAGE_DIR": str(tmp_path / "files"),
            "LONGRUN_GATEWAY_PORT": str(free_port()),
            "LONGRUN_HUB_PORT": str(free_port()),
            "MAKEFLAGS": "",
        })
        gateway = f"http://127.0.0.1:{env['LONGRUN_GATEWAY_PORT']}"
        hub = f"http://127.0.0.1:{env['LONGRUN_HUB_PORT']}"
        logs = {name: tmp_path / f"make-{name}.log" for name in ("gateway", "worker", "hub")}
        makes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in ("gateway", "worker", "hub"):  # all three at once, no waiting in between
                makes[name] = _start_make(name, env, logs[name])
            _wait_healthy(f"{gateway}/healthz", makes, logs, 120)
            _wait_healthy(f"{hub}/healthz", makes, logs, 60)
            job, statuses = _submit_until_accepted(gateway, 90)
            deadline = time.monotonic() + 60
            while job["status"] != "succeeded":
                assert job["status"] in {"queued", "running"}, job
                assert time.monotonic() < deadline, f"job not done: {job}\n{_logs(logs)}"
                job = httpx.get(f"{gateway}/v1/jobs/{job['id']}", headers=DEV, timeout=15,
                                params={"wait": 5, "after_seq": job["seq"]}).json()
            assert schema_is_current(Settings(database_url=database_url))
            for name, path in logs.items():
                text = path.read_text(errors="replace")
                assert "already exists" not in text and "Permission denied" not in text, f"make {name}:\n{text}"
            print(f"{kind}: submit statuses before acceptance {statuses}")
        finally:
            for process in makes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in each terminal
            for process in makes.values():
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
            for pid in processes_with_env("LONGRUN_KEY_PREFIX", key_prefix):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.integration
def test_migrating_a_sqlite_file_waits_for_the_lock_next_to_it(tmp_path: Path) -> None:
    """While one process migrates (holds the lock), another waits instead of racing it to CREATE TABLE."""
    db = tmp_path / "var" / "longrun.db"
    env = service_env({"LONGRUN_DATABASE_URL": f"sqlite:///{db}"})
    with held_lock(Path(f"{db}.migrate.lock")):
        second = subprocess.Popen([sys.executable, "-m", "longrun_common.db"], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(2.0)
        assert second.poll() is None, "migrated while another process held the lock"
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out.decode()
    assert schema_is_current(Settings(database_url=f"sqlite:///{db}"))
    # And four at once, unaided: all succeed (without the lock one of them sometimes died with
    # "table ... already exists").
    fresh = tmp_path / "again.db"
    env = service_env({"LONGRUN_DATABASE_URL": f"sqlite:///{fresh}"})
    runs = [subprocess.Popen([sys.executable, "-m", "longrun_common.db"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    for run in runs:
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out.decode()


@pytest.mark.integration
def test_waiting_for_the_schema(tmp_path: Path) -> None:
    """`python -m longrun_common.db --wait N` (and LONGRUN_MIGRATE_ON_START=false) never migrates: it waits."""
    url = f"sqlite:///{tmp_path / 'longrun.db'}"
    env = service_env({"LONGRUN_DATABASE_URL": url})
    done = subprocess.run([sys.executable, "-m", "longrun_common.db", "--wait", "1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "not current after 1s" in done.stderr, done.stdout + done.stderr
    waiter = subprocess.Popen([sys.executable, "-m", "longrun_common.db", "--wait", "60"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.5)
    assert waiter.poll() is None
    subprocess.run([sys.executable, "-m", "longrun_common.db"], env=env, cwd=ROOT, check=True, timeout=60,
                   capture_output=True)
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and "schema current" in out.decode(), out.decode()


@pytest.mark.integration
def test_install_uv_waits_for_a_concurrent_install_and_reuses_it(tmp_path: Path) -> None:
    """Two `make`s on a fresh clone both install uv into .tools/venv; the second waits, then finds uv there."""
    venv = tmp_path / ".tools" / "venv"
    with held_lock(Path(f"{venv}.lock")):  # the first installer, mid-install
        second = subprocess.Popen([str(ROOT / "scripts" / "install-uv.sh"), sys.executable, str(venv)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(2.0)
        assert second.poll() is None, "installed while another install held the lock"
        assert not venv.exists()
        # What the first installer leaves behind: a working uv.
        (venv / "bin").mkdir(parents=True)
        fake = venv / "bin" / "uv"
        fake.write_text("#!/bin/sh\necho 'uv 0.0.0 (installed by the first make)'\n")
        fake.chmod(0o755)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out.decode()
    assert not (venv / "bin" / "python").exists(), "the second installer installed again"
