"""Prometheus metrics of one gateway app: its own registry, so several apps can live in one process (tests).

With several worker processes (`python -m longrun_gateway --workers N`), PROMETHEUS_MULTIPROC_DIR is set: every
process writes its counters and histograms to files there, and a scrape, whichever worker answers it, sums them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from longrun_common.events import JobError
from longrun_common.models import DeadLetter, Job
from longrun_common.telemetry import retry_reason

from .sqlmetrics import JobsCollector

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class DeadLetterCollector(Collector):
    """Dead-letter depth and oldest age per task, read from SQL at scrape time (no state to drift)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("longrun_dead_letters", "Dead letters waiting, by task", labels=["task"]),
            GaugeMetricFamily(
                "longrun_dead_letter_oldest_age_seconds", "Age of the oldest dead letter, by task", labels=["task"]
            ),
            GaugeMetricFamily("longrun_dead_letters_scrape_ok", "1 when the dead-letter query succeeded"),
        )

    def collect(self) -> Iterator[Metric]:
        depth, age, ok = self._families()
        try:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(DeadLetter.task, func.count(), func.min(col(DeadLetter.failed_at))).group_by(
                        col(DeadLetter.task)
                    )
                ).all()
        except Exception as exc:  # a scrape must never fail because the database is down
            log.warning("dead-letter metrics unavailable: %s", exc)
            ok.add_metric([], 0)
            yield ok
            return
        now = datetime.now(UTC)
        for task, count, oldest in rows:
            depth.add_metric([task], count)
            if oldest is not None:
                oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
                age.add_metric([task], max(0.0, (now - oldest).total_seconds()))
        ok.add_metric([], 1)
        yield from (depth, age, ok)


class Metrics:
    """The gateway's metrics; the dead-letter collector joins once the engine exists (lifespan)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "longrun_gateway_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "longrun_gateway_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.jobs_submitted = Counter(
            "longrun_jobs_submitted",
            "Jobs accepted by the gateway, by task",
            ["task"],
            registry=self.registry,
        )
        self.retries = Counter(
            "longrun_job_retries",
            "Retries scheduled, by task and reason (here: jobs whose worker vanished, found by this reaper)",
            ["task", "reason"],
            registry=self.registry,
        )
        self._dead_letters: DeadLetterCollector | None = None
        self._jobs: JobsCollector | None = None

    def on_lost(self, job: Job, error: JobError, retried: bool) -> None:
        """The reaper in this process ended an attempt whose worker vanished."""
        if retried:
            self.retries.labels(job.task, retry_reason(error.type)).inc()

    def watch_jobs(self, engine: Engine, client: redis.Redis[bytes]) -> None:
        """Queue and job gauges from SQL, plus database and Redis reachability."""
        self.unwatch_jobs()
        self._jobs = JobsCollector(engine, client)
        self.registry.register(self._jobs)

    def unwatch_jobs(self) -> None:
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
            self._jobs = None

    def watch_dead_letters(self, engine: Engine) -> None:
        self.unwatch_dead_letters()
        self._dead_letters = DeadLetterCollector(engine)
        self.registry.register(self._dead_letters)

    def unwatch_dead_letters(self) -> None:
        if self._dead_letters is not None:
            self.registry.unregister(self._dead_letters)
            self._dead_letters = None

    def render(self) -> bytes:
        if MULTIPROC_DIR not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every worker's values, from their files
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # registers itself
        if self._dead_letters is not None:
            registry.register(self._dead_letters)
        if self._jobs is not None:
            registry.register(self._jobs)
        return generate_latest(registry)


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR for the worker processes started inside: the one given in the environment
    (emptied first: files of an earlier run would be summed in), else a temporary one."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="longrun-gateway-metrics-") as path:
        os.environ[MULTIPROC_DIR] = path
        try:
            yield Path(path)
        finally:
            del os.environ[MULTIPROC_DIR]
