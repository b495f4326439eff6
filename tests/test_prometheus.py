"""The alert rules and the Grafana dashboard, against promtool and a real Prometheus scraping a running stack.

Needs `prometheus` and `promtool` on PATH (Debian's `prometheus` package; `make test` installs it as root via
`make prometheus`). Missing, the tests fail and say so: they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from longrun_common.jobs import JobStore
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import submit, wait_for
from tests.support.processes import free_port
from tests.support.servers import repo_root

pytestmark = pytest.mark.e2e

ROOT = repo_root()
RULES = ROOT / "charts" / "longrun" / "files" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "charts" / "longrun" / "dashboards" / "longrun.json"
RULE_TESTS = ROOT / "tests" / "prometheus" / "rules-test.yaml"
AUTH = {"Authorization": "Bearer dev-key"}
# For the live test: each alert's production threshold → one a short test provokes. `for:` becomes 2 s.
TEST_THRESHOLDS = {"LongrunJobStuck": ("> 600", "> 2")}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not on PATH: run `make prometheus` (Debian's prometheus package, as root)")
    return path


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    # Every alert is unit-tested and carries its runbook.
    alerts = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    for rule in alerts:
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_dashboard_json_is_generated() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "grafana_dashboard.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, with Grafana's variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"].replace("$__rate_interval", "30s"))
               for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    assert len(queries) >= 20
    return queries


def rules_for_test(tmp_path: Path) -> Path:
    """The chart's rules with short `for:` and the test thresholds (same expressions otherwise)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "2s"
            if rule["alert"] in TEST_THRESHOLDS:
                old, new = TEST_THRESHOLDS[rule["alert"]]
                assert old in rule["expr"], (rule["alert"], rule["expr"])
                rule["expr"] = rule["expr"].replace(old, new)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    def __init__(self, tmp_path: Path, targets: dict[str, str], rules: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp_path / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Prometheus not ready:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def firing(self) -> dict[str, list[dict[str, str]]]:
        alerts = httpx.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        found: dict[str, list[dict[str, str]]] = {}
        for alert in alerts:
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def store(job_store: JobStore) -> JobStore:
    return job_store


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_and_alerts_on_a_real_prometheus(
    services: ServiceFactory, store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    metrics_port = free_port()
    # No worker consumes `low`: a job there provokes LongrunNoWorkers.
    queues = ",".join(store.keys.queue(q) for q in ("default", "high"))
    worker = services("worker", "--concurrency=3", f"--queues={queues}",
                      env={"LONGRUN_WORKER_METRICS_PORT": str(metrics_port)}, wait=False)
    gateway, hub = services("gateway", wait=False), services("hub", wait=False)
    wait_ready(worker, gateway, hub)  # booted side by side
    prometheus = Prometheus(tmp_path, {
        "longrun-gateway": f"127.0.0.1:{gateway.port}",
        "longrun-hub": f"127.0.0.1:{hub.port}",
        "longrun-worker": f"127.0.0.1:{metrics_port}",
    }, rules_for_test(tmp_path))
    try:
        # A small load: jobs through the gateway (one retries once), a dead letter, a job that goes quiet
        # (the stuck signal), one waiting in a queue nobody consumes, and a live client on the hub.
        with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as http:
            quiet = http.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 4, "delay": 10}}).json()
            followed = http.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 60, "delay": 0.1}}).json()
            jobs = [http.post("/v1/jobs", json={"task": "demo.steps", "args": args}).json()["id"]
                    for args in ({"steps": 3}, {"steps": 4, "fail_times": 1}, {"steps": 2})]
            http.get(f"/v1/jobs/{followed['id']}")
        bad = submit(store, "demo.steps", {"steps": "many"})  # the gateway would refuse it; the worker fails it
        submit(store, "demo.steps", {"steps": 1}, queue="low")
        url = f"ws://127.0.0.1:{hub.port}/v1/ws/jobs/{followed['id']}?token={quote(followed['stream']['token'])}"
        with connect(url, open_timeout=10) as ws:
            ws.recv(timeout=10)
            wait_for(store, [*jobs, bad.id], timeout=60)

            missing = dashboard_queries()
            deadline = time.monotonic() + 60
            while missing and time.monotonic() < deadline:
                ws.recv(timeout=10)  # keep reading: a live client, delivery lag measured
                missing = [(title, expr) for title, expr in missing if not prometheus.query(expr)]
                time.sleep(0.5)
            assert not missing, f"dashboard panels without data: {missing}"

        expected = {"LongrunJobStuck": {"task": "demo.steps"}, "LongrunDeadLettersGrowing": {"task": "demo.steps"},
                    "LongrunNoWorkers": {"queue": "low"}}
        deadline = time.monotonic() + 45
        firing: dict[str, list[dict[str, str]]] = {}
        while time.monotonic() < deadline:
            firing = prometheus.firing()
            if all(any(labels.items() <= alert.items() for alert in firing.get(name, []))
                   for name, labels in expected.items()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"alerts not firing: expected {expected}, firing {firing}")
        assert "LongrunRedisDown" not in firing and "LongrunDatabaseDown" not in firing
        assert quiet["status"] == "queued"
    finally:
        prometheus.stop()
        worker.signal_group(signal.SIGKILL)  # the quiet job would hold a warm shutdown for its 10 s step
