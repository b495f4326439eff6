"""Prometheus metrics of a worker: written by every pool process, served by the main process.

Celery's prefork pool runs tasks in child processes, so the metrics use prometheus_client's multiprocess mode:
`python -m longrun_worker` points PROMETHEUS_MULTIPROC_DIR at a directory (emptied at start) before
prometheus_client is imported (see `__main__`), every process writes its values to files there, and the main
process serves their sum on `LONGRUN_WORKER_METRICS_PORT`. Files of live gauges left by a dead child
(recycled, killed by a hard time limit) are removed at the next scrape, so `longrun_jobs_running` never
counts a dead process.

Label values come from small closed sets (task names, outcomes, reasons): never a job id.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from longrun_common.processes import pid_alive
from longrun_common.telemetry import retry_reason

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Attempt outcomes: how one run of a job ended.
OUTCOMES = ("succeeded", "failed", "cancelled", "retrying", "drained", "fenced")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# The children write when each running job last reported; the main process serves the age instead.
_LAST_REPORT = "longrun_job_last_report_timestamp_seconds"
REPORT_AGE = "longrun_job_seconds_since_report"

_registry = CollectorRegistry(auto_describe=True)  # in-process use (tests); multiprocess mode reads the files

jobs_started = Counter("longrun_jobs_started", "Attempts a worker started, by task", ["task"], registry=_registry)
jobs_finished = Counter("longrun_jobs_finished", "Attempts that ended, by task and outcome",
                        ["task", "outcome"], registry=_registry)
run_duration = Histogram("longrun_job_run_duration_seconds", "Run time of one attempt, by task", ["task"],
                         buckets=DURATION_BUCKETS, registry=_registry)
queue_wait = Histogram("longrun_job_queue_wait_seconds",
                       "From submit (or the retry's due time) until a worker started the attempt, by task",
                       ["task"], buckets=WAIT_BUCKETS, registry=_registry)
retries = Counter("longrun_job_retries", "Retries scheduled, by task and reason", ["task", "reason"],
                  registry=_registry)
running = Gauge("longrun_jobs_running", "Attempts running now in this worker, by task", ["task"],
                multiprocess_mode="livesum", registry=_registry)
reports_published = Counter("longrun_progress_reports_published",
                            "Progress events published (after coalescing), by task", ["task"], registry=_registry)
reports_coalesced = Counter("longrun_progress_reports_coalesced",
                            "Progress calls folded into a later event instead of their own, by task", ["task"],
                            registry=_registry)
last_report = Gauge(_LAST_REPORT, "Epoch of the oldest last report among running jobs, by task", ["task"],
                    multiprocess_mode="livemin", registry=_registry)
drains = Counter("longrun_worker_drains", "Warm shutdowns (SIGTERM) this worker began", registry=_registry)
queues_consumed = Gauge("longrun_worker_queue_consumers", "1 per worker consuming the queue", ["queue"],
                        multiprocess_mode="livemax", registry=_registry)


def record_retry(task: str, error_type: str) -> None:
    retries.labels(task, retry_reason(error_type)).inc()


class AttemptMetrics:
    """The metrics of one running attempt; the runner calls `begin` and `end`, the reporter `reported`."""

    def __init__(self, task: str) -> None:
        self.task = task
        self._running = running.labels(task)
        self._last_report = last_report.labels(task)
        self._published = reports_published.labels(task)
        self._coalesced = reports_coalesced.labels(task)
        self._started = 0.0
        self._open = False
        self.outcome = "failed"  # until the runner records another: an unexpected error ends the attempt

    def begin(self, waited: float | None) -> None:
        self._started = time.monotonic()
        self._open = True
        jobs_started.labels(self.task).inc()
        if waited is not None:
            queue_wait.labels(self.task).observe(max(0.0, waited))
        self._running.inc()
        self._last_report.set(time.time())

    def reported(self, calls: int) -> None:
        """One event published for `calls` task-side progress calls (called by the reporter thread)."""
        self._published.inc()
        if calls > 1:
            self._coalesced.inc(calls - 1)
        self._last_report.set(time.time())

    def end(self, outcome: str) -> None:
        if not self._open:
            return
        self._open = False
        jobs_finished.labels(self.task, outcome).inc()
        run_duration.labels(self.task).observe(time.monotonic() - self._started)
        self._running.dec()
        self._last_report.set(math.inf)  # no longer running: never the oldest


# --- the main process: directory and endpoint ------------------------------------------------------------------

_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def forget_dead_processes(path: str) -> list[int]:
    """`mark_process_dead` for every pool process whose live-gauge files remain but which is gone."""
    dead: list[int] = []
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in dead or pid_alive(pid):
            continue
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        dead.append(pid)
    return dead


class WorkerCollector(Collector):
    """Every process's values from the directory, with the last-report epoch turned into an age."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # two scrapes at once would race on removing the same files
            forget_dead_processes(self.path)
            metrics = self._read()
        now = time.time()
        age = GaugeMetricFamily(REPORT_AGE, "Seconds since the least recent progress report of a running job "
                                            "(0 when nothing runs), by task: the stuck-job signal", labels=["task"])
        for metric in metrics:
            if metric.name != _LAST_REPORT:
                yield metric
                continue
            for sample in metric.samples:
                # 0: a pool process has just created the task's gauge (the file's initial value) and not yet set
                # it, so the merged minimum is 0. Read as a report at the epoch it made the stuck-job signal jump
                # to 56 years; that scrape now shows no age for the task instead.
                if math.isfinite(sample.value) and sample.value > 0:
                    age.add_metric([sample.labels["task"]], max(0.0, now - sample.value))
        yield age


    def _read(self) -> list[Metric]:
        # A pool process creating its file at this moment leaves it empty for an instant: skip such files
        # (their values are zero) rather than fail the scrape.
        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if _size(f) >= 8]
        for attempt in range(3):
            try:
                return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
            except (struct.error, FileNotFoundError):
                if attempt == 2:
                    raise
                time.sleep(0.01)
                files = [f for f in files if _size(f) >= 8]
        return []


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def serve(port: int, host: str) -> Any:
    """Serve this worker's metrics (every pool process summed) on `host:port`; None when it cannot."""
    path = os.environ.get(MULTIPROC_DIR)
    if not path:
        log.warning("worker metrics: %s is not set (start the worker with `python -m longrun_worker`); "
                    "not serving metrics", MULTIPROC_DIR)
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(path))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # a busy port must not stop the worker from running jobs
        log.warning("worker metrics: cannot listen on %s:%s (%s); not serving metrics", host, port, exc)
        return None
    log.info("worker metrics on http://%s:%s/metrics", host, port)
    return server
