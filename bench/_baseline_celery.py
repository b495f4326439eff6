"""Plain Celery configured as the original tutorial configures it: the baseline of bench/chaos.py.

Not a benchmark (running this file only says so). Workers run it as `celery -A bench._baseline_celery worker`.
Redis broker, `task_acks_late=True`, `worker_prefetch_multiplier=1`, `worker_max_tasks_per_child=1000`, the default
visibility timeout (1 hour), no result backend. The task sleeps in steps and records what happened in a separate
"ledger" Redis that the benchmark never restarts, so lost and duplicated jobs can be counted after the broker lost
its data: `starts:{job}` (list of [ts, hostname]), `done:{job}` (INCR per completion), `running:{hostname}` (set),
`done_jobs` (set).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

BROKER_ENV = "BASELINE_BROKER_URL"
LEDGER_ENV = "BASELINE_LEDGER_URL"
BACKEND_ENV = "BASELINE_BACKEND_URL"  # a result backend, which a chord needs (bench/workflow_fanout.py)


def create_app(broker_url: str, backend_url: str | None = None) -> Celery:
    """The tutorial's app: Redis broker, acks late, prefetch one, a pool process replaced after 1,000 tasks;
    everything else Celery's defaults."""
    app = Celery("baseline", broker=broker_url, backend=backend_url)
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, worker_max_tasks_per_child=1000)
    return app


# `celery -A` needs a module-level app; the URL comes from the benchmark that starts the worker (no I/O here).
app = create_app(os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"), os.environ.get(BACKEND_ENV) or None)
_ledger: tuple[int, redis.Redis] | None = None


def ledger() -> redis.Redis:
    """This process's client for the ledger Redis (a forked pool child makes its own)."""
    global _ledger
    if _ledger is None or _ledger[0] != os.getpid():
        _ledger = (os.getpid(), redis.Redis.from_url(os.environ[LEDGER_ENV]))
    return _ledger[1]


@app.task(bind=True, name="baseline.steps")
def steps(self, job_id: str, steps: int, delay: float) -> int:  # type: ignore[no-untyped-def]
    """Sleep `steps` times `delay` seconds; record the start and the completion in the ledger."""
    host = str(self.request.hostname)
    book = ledger()
    book.rpush(f"starts:{job_id}", json.dumps([time.time(), host]))
    book.sadd(f"running:{host}", job_id)
    for _ in range(steps):
        time.sleep(delay)
    pipe = book.pipeline()
    pipe.incr(f"done:{job_id}")
    pipe.sadd("done_jobs", job_id)
    pipe.set("last_done_at", repr(time.time()))
    pipe.srem(f"running:{host}", job_id)
    pipe.execute()
    return steps


@app.task(name="baseline.short")
def short(steps: int, delay: float) -> int:
    """A short child of bench/workflow_fanout.py's group: `steps` sleeps of `delay` seconds."""
    for _ in range(steps):
        time.sleep(delay)
    return steps


@app.task(name="baseline.collect")
def collect(results: list[int]) -> int:
    """The chord's body: receives the group's results."""
    return len(results)


@app.task(name="baseline.fan_in")
def fan_in(results: list[int], label: str) -> int:
    """bench/chaos.py's chord body: records in the ledger that it ran and how many inputs it received."""
    pipe = ledger().pipeline()
    pipe.set(f"fan_in:{label}", json.dumps(len(results)))
    pipe.incr(f"fan_in_runs:{label}")
    pipe.sadd("done_jobs", f"fan-in:{label}")
    pipe.execute()
    return len(results)


if __name__ == "__main__":
    print("bench/_baseline_celery.py is the Celery app bench/chaos.py runs as its baseline; not a benchmark.")
