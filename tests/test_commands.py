"""The commands a user runs: `make up` (scripts/stack.py), `make down` (scripts/devredis.py) and the Makefile.

The stack test is the `make up` experience minus the installing: the same supervisor, on a private Redis, a fresh
SQLite file and free ports. It submits a job over HTTP with the dev key, watches it finish, presses Ctrl-C and
then looks for any process still carrying the stack's environment: none may survive, not even a pool process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from longrun_common.settings import Settings
from tests.support.processes import free_port, service_env
from tests.support.servers import repo_root

ROOT = repo_root()
STACK = ROOT / "scripts" / "stack.py"


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment has NAME=value (zombies have none and are not listed)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found


def wait_until(predicate: object, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-6000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not after {timeout}s\n{tail}")


@pytest.fixture
def stack_env(redis_url: str, key_prefix: str, tmp_path: Path) -> dict[str, str]:
    """What a user's shell would hold, pointed at this test's Redis, database and free ports."""
    return service_env({
        "LONGRUN_REDIS_URL": redis_url,
        "LONGRUN_DATABASE_URL": f"sqlite:///{tmp_path / 'longrun.db'}",  # fresh: the stack migrates it
        "LONGRUN_KEY_PREFIX": key_prefix,  # also marks every process the stack starts (see processes_with_env)
        "LONGRUN_STORAGE_DIR": str(tmp_path / "files"),
        "LONGRUN_GATEWAY_PORT": str(free_port()),
        "LONGRUN_HUB_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
    })


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, str(STACK)], env=stack_env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in processes_with_env("LONGRUN_KEY_PREFIX", stack_env["LONGRUN_KEY_PREFIX"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_make_up_stack_runs_a_job_and_ctrl_c_leaves_no_orphans(
    stack: tuple[subprocess.Popen[bytes], Path], stack_env: dict[str, str]
) -> None:
    process, log = stack
    marker = stack_env["LONGRUN_KEY_PREFIX"]
    gateway = f"http://127.0.0.1:{stack_env['LONGRUN_GATEWAY_PORT']}"
    hub = f"http://127.0.0.1:{stack_env['LONGRUN_HUB_PORT']}"
    flower = f"http://127.0.0.1:{stack_env['FLOWER_PORT']}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"stack exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        return "Longrun is up" in log.read_text(errors="replace")

    wait_until(up, 150, "the stack's ready banner", log)
    for url in (f"{gateway}/healthz", f"{hub}/healthz", f"{flower}/healthcheck"):
        assert httpx.get(url, timeout=5).status_code == 200, url
    output = log.read_text(errors="replace")
    prefixes = {line.split(" | ", 1)[0].strip() for line in output.splitlines() if " | " in line}
    assert {"migrate", "gateway", "hub", "worker", "flower", "stack"} <= prefixes, prefixes
    assert "dev-key (tenant dev)" in output  # the banner tells the user which key to use
    # stack + gateway + hub + flower + worker (main process and at least one pool process)
    assert len(processes_with_env("LONGRUN_KEY_PREFIX", marker)) >= 6

    headers = {"Authorization": "Bearer dev-key"}
    response = httpx.post(f"{gateway}/v1/jobs", headers=headers, timeout=10,
                          json={"task": "demo.steps", "args": {"steps": 5, "delay": 0.05}})
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + 60
    while job["status"] != "succeeded":
        assert job["status"] in {"queued", "running"}, job
        assert time.monotonic() < deadline, f"job not finished after 60s: {job}\n{log.read_text()[-6000:]}"
        response = httpx.get(f"{gateway}/v1/jobs/{job['id']}", headers=headers, timeout=15,
                             params={"wait": 5, "after_seq": job["seq"]})
        assert response.status_code == 200, response.text
        job = response.json()
    assert job["progress"]["percent"] == 100.0
    assert job["stream"]["sse_url"].startswith(hub)  # the gateway hands out the hub this stack runs

    process.send_signal(signal.SIGINT)  # what Ctrl-C does to `make up`
    assert process.wait(60) == 0, log.read_text(errors="replace")[-6000:]
    survivors = processes_with_env("LONGRUN_KEY_PREFIX", marker)
    assert survivors == [], f"processes outlived the stack: {survivors}"
    assert "stack   | stopped" in log.read_text(errors="replace")


@pytest.mark.integration
def test_devredis_starts_a_redis_once_and_down_stops_only_that(tmp_path: Path) -> None:
    """`make up`'s Redis step: start one when nothing answers, reuse it after, and `make down` stops it."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (`make test` puts one there)")
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "devredis.py"  # a copy: its var/ (pidfile, data) is then under tmp_path
    shutil.copy(ROOT / "scripts" / "devredis.py", script)
    env = {**os.environ, "LONGRUN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    def run(command: str) -> str:
        done = subprocess.run([sys.executable, str(script), command], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    pidfile = tmp_path / "var" / "redis.pid"
    try:
        assert "started redis-server" in run("ensure")
        pid = int(pidfile.read_text())
        assert "Redis answers" in run("ensure")  # a running Redis is used, not started again
        assert int(pidfile.read_text()) == pid
        assert f"stopped redis-server (pid {pid})" in run("stop")
        assert not pidfile.exists()
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "redis-server gone")
        assert "nothing to stop" in run("stop")
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.e2e
def test_makefile_has_every_documented_target() -> None:
    """The documented commands (and the internal ones the README names) exist; `make -n` only prints them."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    targets = ["up", "down", "test", "gateway", "hub", "worker", "flower", "bench", "lint",
               "install", "sync", "redis", "migrate", "browsers", "clean", "images", "rehearse"]
    for target in targets:
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False)
        assert done.returncode == 0, f"make -n {target}: {done.stderr}"
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


@pytest.mark.e2e
def test_make_worker_queues_reach_the_worker(tmp_path: Path) -> None:
    """`make worker QUEUES=…` hands the queues to stack.py, which checks them against LONGRUN_QUEUES."""
    done = subprocess.run(["make", "-n", "worker", "QUEUES=reports,default"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=False)
    assert "scripts/stack.py worker --queues reports,default --" in done.stdout, done.stdout
    env = {**os.environ, "LONGRUN_QUEUES": "default,high", "LONGRUN_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    refused = subprocess.run([sys.executable, str(STACK), "worker", "--queues", "reports"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2
    assert "LONGRUN_WORKER_QUEUES names 'reports', not in LONGRUN_QUEUES (default, high)" in refused.stderr


@pytest.mark.unit
def test_readme_documents_every_setting() -> None:
    """Every LONGRUN_* setting is in the README's configuration tables (a new one must be documented)."""
    readme = (ROOT / "README.md").read_text()
    missing = [f"LONGRUN_{name.upper()}" for name in Settings.model_fields if f"`LONGRUN_{name.upper()}`" not in readme]
    assert missing == [], f"README.md does not document {missing}"


def test_bench_runner_repeats_each_verdict_and_reports_a_failed_script(tmp_path: Path) -> None:
    """`make bench` lists every MET/MISSED line at the end, and a script that fails is told apart from a miss."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_all", repo_root() / "scripts" / "bench_all.py")
    assert spec is not None and spec.loader is not None
    bench_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_all)
    script = tmp_path / "fake_bench.py"
    script.write_text("import sys\nprint('a figure: 12 ms')\nprint('  target: p99 <= 20 ms -> MET (12 ms)')\n"
                      "print('target: CPU <= 3x -> MISSED (4.1x)')\nsys.exit(3)\n")
    code, verdicts = bench_all.run(script, [])
    assert code == 3
    assert verdicts == ["target: p99 <= 20 ms -> MET (12 ms)", "target: CPU <= 3x -> MISSED (4.1x)"]
