"""Every service's /metrics against docs/METRICS.md, and the worker's metrics across its prefork pool."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from longrun_common.jobs import JobStore
from longrun_common.states import JobStatus
from longrun_gateway.sqlmetrics import JobsCollector
from longrun_worker import metrics as worker_metrics
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import submit, wait_for
from tests.support.metrics import check_against_docs, documented, samples, scrape
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def store(job_store: JobStore) -> JobStore:
    return job_store


def test_metrics_table_is_well_formed() -> None:
    table = documented()
    assert len(table) >= 30
    for name, family in table.items():
        assert family.type in {"counter", "gauge", "histogram"}, name
        assert (family.type == "counter") == name.endswith("_total"), f"{name}: counters, and only they, end _total"
        assert "job_id" not in family.labels and "id" not in family.labels, f"{name}: a label per job is a defect"
        assert family.services <= {"gateway", "worker", "hub"}, name


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_metric(url: str, name: str, labels: dict[str, str], check: object, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = value(samples(scrape(url)), name, **labels)
        if check(seen):  # type: ignore[operator]
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} = {seen} after {timeout}s")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_service_exports_its_documented_metrics(services: ServiceFactory, store: JobStore) -> None:
    port = free_port()
    worker = services("worker", "--concurrency=2", env={"LONGRUN_WORKER_METRICS_PORT": str(port)}, wait=False)
    gateway, hub = services("gateway", wait=False), services("hub", wait=False)
    wait_ready(worker, gateway, hub)  # booted side by side
    url = f"http://127.0.0.1:{port}/metrics"

    ok = submit(store, "demo.steps", {"steps": 3})
    retried = submit(store, "demo.steps", {"steps": 4, "fail_times": 1})
    bad = submit(store, "demo.steps", {"steps": "many"})  # the worker's own validation fails it at once
    quiet = submit(store, "demo.steps", {"steps": 2, "delay": 4.0})  # reports, then is silent for 4 s
    # The stuck-job signal: the quiet job's last report ages while its lease is kept by heartbeats.
    age = wait_metric(url, "longrun_job_seconds_since_report", {"task": "demo.steps"}, lambda v: v >= 2.0)
    assert age < 30
    assert value(samples(scrape(url)), "longrun_jobs_running", task="demo.steps") >= 1
    done = {job.id: job for job in wait_for(store, [ok.id, retried.id, bad.id, quiet.id], timeout=60)}
    assert [done[j.id].status for j in (ok, retried, bad, quiet)] == ["succeeded", "succeeded", "failed", "succeeded"]

    text = scrape(url)
    check_against_docs("worker", text)
    found = samples(text)
    assert value(found, "longrun_jobs_started_total", task="demo.steps") == 5  # the retried job ran twice
    assert value(found, "longrun_jobs_finished_total", task="demo.steps", outcome="succeeded") == 3
    assert value(found, "longrun_jobs_finished_total", task="demo.steps", outcome="failed") == 1
    assert value(found, "longrun_jobs_finished_total", task="demo.steps", outcome="retrying") == 1
    assert value(found, "longrun_job_retries_total", task="demo.steps", reason="transient") == 1
    assert value(found, "longrun_job_run_duration_seconds_count", task="demo.steps") == 5
    assert value(found, "longrun_job_queue_wait_seconds_count", task="demo.steps") == 5
    assert value(found, "longrun_jobs_running", task="demo.steps") == 0
    # Reports published while a job ran: the quiet job's two (4 s apart) and the retried job's first attempt's,
    # flushed as it failed. A job that succeeds sends its last report in its success event, not on its own.
    assert value(found, "longrun_progress_reports_published_total", task="demo.steps") >= 3
    assert value(found, "longrun_worker_queue_consumers", queue="default") == 1
    assert ("longrun_job_seconds_since_report", (("task", "demo.steps"),)) not in found  # nothing runs
    assert not any(job_id in str(key) for key in found for job_id in done), "a job id in a label"

    # Gateway: its SQL gauges see a queued job (the worker is stopped first, so that it stays queued).
    worker.stop()
    waiting = submit(store, "demo.steps", {"steps": 1}, tenant="acme")
    text = scrape(gateway.url + "/metrics")
    check_against_docs("gateway", text)
    found = samples(text)
    assert value(found, "longrun_queue_jobs", queue="default", status="queued", tenant="acme") == 1
    assert 0 <= value(found, "longrun_queue_oldest_age_seconds", queue="default") < 30
    assert value(found, "longrun_dead_letters", task="demo.steps") == 1
    assert value(found, "longrun_database_up") == 1 and value(found, "longrun_redis_up") == 1
    assert waiting.id not in text

    check_against_docs("hub", scrape(hub.url + "/metrics"))


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dead_pool_process_is_not_counted_running(services: ServiceFactory, store: JobStore) -> None:
    """A pool process killed mid-job (hard time limit, OOM) leaves its live-gauge file behind: the next scrape
    removes it, so the worker does not report a job running forever."""
    port = free_port()
    worker = services("worker", "--concurrency=1", env={"LONGRUN_WORKER_METRICS_PORT": str(port)})
    url = f"http://127.0.0.1:{port}/metrics"
    job = submit(store, "demo.steps", {"steps": 2, "delay": 5.0})
    wait_metric(url, "longrun_jobs_running", {"task": "demo.steps"}, lambda v: v == 1)
    running = store.get(job.id)
    assert running is not None and running.status == JobStatus.RUNNING.value
    assert worker.process is not None
    (child,) = children(worker.process.pid)
    os.kill(child, signal.SIGKILL)
    # Well before the lease (10 s) lets the reaper start the job again.
    wait_metric(url, "longrun_jobs_running", {"task": "demo.steps"}, lambda v: v == 0, timeout=5)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_jobs_collector_groups_and_caches(engine: Engine, job_store: JobStore) -> None:
    submit(job_store, "demo.steps", {"steps": 1}, tenant="dev")
    submit(job_store, "demo.steps", {"steps": 1}, tenant="dev")
    submit(job_store, "demo.steps", {"steps": 1}, tenant="acme", queue="high")
    collector = JobsCollector(engine, job_store.redis, cache_seconds=60)

    def current() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples}

    first = current()
    assert first[("longrun_queue_jobs", (("queue", "default"), ("status", "queued"), ("tenant", "dev")))] == 2
    assert first[("longrun_queue_jobs", (("queue", "high"), ("status", "queued"), ("tenant", "acme")))] == 1
    assert 0 <= first[("longrun_queue_oldest_age_seconds", (("queue", "high"),))] < 30
    submit(job_store, "demo.steps", {"steps": 1}, tenant="dev")
    assert current() == first  # cached: one query per period however many scrapes
    collector.cache_seconds = 0
    assert current()[("longrun_queue_jobs", (("queue", "default"), ("status", "queued"), ("tenant", "dev")))] == 3


def test_retry_reasons_are_a_closed_set() -> None:
    assert {worker_metrics.retry_reason(t) for t in ("TransientError", "timeout", "lost", "drained",
                                                     "ConnectionError", "KeyError", "x" * 300)} == {
        "transient", "timeout", "lost", "drained", "error"}
