"""Queue and job gauges from SQL (the system of record), computed at scrape time with one grouped query.

Every gateway exports them, so the query is cheap (one GROUP BY over the active jobs, on `ix_jobs_status`) and
its answer is cached for a few seconds: several Prometheus replicas and gateway processes scraping at once
cost the database one query per cache period each. Labels are queue, status and tenant: small closed sets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from longrun_common.models import Job
from longrun_common.states import JobStatus

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)
CACHE_SECONDS = 5.0


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class JobsCollector(Collector):
    """`longrun_queue_jobs`, `longrun_queue_oldest_age_seconds`, `longrun_database_up`, `longrun_redis_up`."""

    def __init__(self, engine: Engine, client: redis.Redis[bytes], *, cache_seconds: float = CACHE_SECONDS):
        self.engine = engine
        self.redis = client
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("longrun_queue_jobs", "Active jobs by queue, status (queued, retrying, running) "
                                                    "and tenant, from SQL", labels=["queue", "status", "tenant"]),
            GaugeMetricFamily("longrun_queue_oldest_age_seconds",
                              "How long the longest-waiting job of the queue has been due (queued since submit or "
                              "requeue, retrying since its retry time), from SQL", labels=["queue"]),
            GaugeMetricFamily("longrun_database_up", "1 when the gateway's metrics query reached the database"),
            GaugeMetricFamily("longrun_redis_up", "1 when the gateway's PING reached Redis"),
        )

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one query
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                self._cached = (now, self._compute())
            metrics = self._cached[1]
        yield from metrics

    def _compute(self) -> list[Metric]:
        jobs, oldest, database_up, redis_up = self._families()
        try:
            with Session(self.engine) as session:
                rows = session.execute(
                    select(col(Job.queue), col(Job.status), col(Job.tenant), func.count(),
                           func.min(col(Job.updated_at)), func.min(col(Job.next_retry_at)))
                    .where(col(Job.status).in_(ACTIVE))
                    .group_by(col(Job.queue), col(Job.status), col(Job.tenant))
                ).all()
        except Exception as exc:  # a scrape must never fail because the database is down
            log.warning("job metrics unavailable: %s", exc)
            database_up.add_metric([], 0)
        else:
            database_up.add_metric([], 1)
            now = time.time()
            ages: dict[str, float] = {}
            for queue, status, tenant, count, updated, next_retry in rows:
                jobs.add_metric([queue, status, tenant], count)
                since = _epoch(updated) if status == JobStatus.QUEUED.value else _epoch(next_retry)
                ages.setdefault(queue, 0.0)
                if status != JobStatus.RUNNING.value and since is not None:
                    ages[queue] = max(ages[queue], now - since)
            for queue, age in sorted(ages.items()):
                oldest.add_metric([queue], age)
        try:
            self.redis.ping()
            redis_up.add_metric([], 1)
        except redis.RedisError as exc:
            log.warning("Redis unavailable for metrics: %s", exc)
            redis_up.add_metric([], 0)
        return [jobs, oldest, database_up, redis_up]
