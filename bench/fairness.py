"""Fairness between tenants: tenant A floods the queue, then tenant B submits one job. How long does B wait?

Longrun: A's jobs are accepted as the gateway accepts them (JobStore.submit_many, one SQL transaction per 500,
then each job through `dispatch.send_job`), run by a real worker (`python -m longrun_worker --concurrency N`),
with the fair scheduler (LONGRUN_FAIR_WINDOW, default). B's wait is its attempt's start minus its submit.

Baseline: plain Celery FIFO on the same number of worker slots (bench/_baseline_celery.py: tutorial settings, a
task sleeping the same time), A's messages sent first, then B's. B's wait is its start (from the ledger) minus
its send. Plain FIFO makes B wait for A's whole backlog (jobs x duration / slots), so the baseline is cut off
at --cap seconds and reported as at least that, with B's place in the queue.

Target: B waits at most 2 x one job's duration. Bounded: neither side waits for A's backlog to drain.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from _common import REPO, Stack, parser, percentile, print_table, ratio, say, stack
from sqlmodel import Session, col, select

from longrun_common.jobs import JobStore
from longrun_common.models import Attempt, Job
from tests.support.jobs import close_store, make_store, new_job
from tests.support.servers import RedisServer

TARGET = 2.0  # B's wait, in job durations


def longrun_wait(st: Stack, args: Any) -> tuple[float, float]:
    """Seconds from B's submit to B's start with Longrun's fair scheduler, and the median time one of A's jobs
    took on the worker (its attempt's start to end: the sleep plus the job's bookkeeping on this machine)."""
    store = make_store(st.settings)
    try:
        st.worker("--concurrency", str(args.concurrency))
        flood = [new_job("demo.steps", {"steps": 1, "delay": args.duration}, tenant="a") for _ in range(args.jobs)]
        for start in range(0, len(flood), 500):
            store.submit_many(flood[start:start + 500])
        say(f"Longrun: A submitted {args.jobs} jobs")
        time.sleep(args.duration * 2)  # A's jobs are running: every slot is busy
        late = store.submit(new_job("demo.steps", {"steps": 1, "delay": args.duration}, tenant="b"))
        deadline = time.time() + args.cap
        while time.time() < deadline:
            with Session(store.engine) as session:
                attempt = session.exec(select(Attempt).where(Attempt.job_id == late.id)).first()
                job = session.get(Job, late.id)
            if attempt is not None and job is not None:
                return _epoch(attempt.started_at) - _epoch(job.created_at), job_duration(store)
            time.sleep(0.02)
        return float("inf"), job_duration(store)
    finally:
        close_store(store)
        st.stop()


def celery_wait(st: Stack, args: Any) -> tuple[float, int]:
    """Seconds from B's send to B's start on plain Celery FIFO (inf past the cap), and A's jobs ahead of B."""
    broker, ledger_server = RedisServer().start(), RedisServer().start()
    try:
        sys.path.insert(0, str(REPO))
        from bench._baseline_celery import create_app

        app = create_app(broker.url)
        ledger = redis.Redis.from_url(ledger_server.url)
        env = {"BASELINE_BROKER_URL": broker.url, "BASELINE_LEDGER_URL": ledger_server.url}
        argv = [sys.executable, "-m", "celery", "-A", "bench._baseline_celery", "worker", "--loglevel", "INFO",
                "--concurrency", str(args.concurrency), "--hostname", "fifo@bench"]
        st.process("celery", argv, env).wait_log("ready.", timeout=120)
        task = app.signature("baseline.steps")
        for _ in range(args.jobs):
            task.apply_async(kwargs={"job_id": str(uuid.uuid4()), "steps": 1, "delay": args.duration})
        say(f"Celery: A sent {args.jobs} jobs")
        time.sleep(args.duration * 2)
        late = str(uuid.uuid4())
        sent = time.time()
        task.apply_async(kwargs={"job_id": late, "steps": 1, "delay": args.duration})
        ahead = int(broker_depth(redis.Redis.from_url(broker.url))) - 1
        while time.time() < sent + args.cap:
            starts = ledger.lrange(f"starts:{late}", 0, 0)
            if starts:
                return json.loads(starts[0])[0] - sent, ahead
            time.sleep(0.05)
        return float("inf"), ahead
    finally:
        st.stop()
        broker.stop()
        ledger_server.stop()


def job_duration(store: JobStore) -> float:
    """The median of A's finished attempts, start to end."""
    with Session(store.engine) as session:
        spans = [_epoch(a.finished_at) - _epoch(a.started_at)
                 for a in session.exec(select(Attempt).where(col(Attempt.finished_at).is_not(None)))
                 if a.finished_at is not None]
    return percentile(spans, 50)


def broker_depth(client: redis.Redis[bytes]) -> int:
    return int(client.llen("celery"))


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def main() -> None:
    ap = parser(__doc__ or "")
    ap.add_argument("--jobs", type=int, default=2000, help="A's flood")
    ap.add_argument("--duration", type=float, default=0.5, help="seconds one job takes")
    ap.add_argument("--concurrency", type=int, default=4, help="worker slots (one worker process each side)")
    ap.add_argument("--cap", type=float, default=30.0, help="stop waiting for B after this many seconds")
    args = ap.parse_args()
    with stack(args, name="fairness") as st:
        ours, duration = longrun_wait(st, args)
    with stack(args, name="fairness-celery") as st:
        base, ahead = celery_wait(st, args)
    # One job's duration: what a job of A took on the worker, start to end (the task's sleep plus the attempt's
    # bookkeeping), never less than the sleep.
    duration = max(args.duration, duration) if duration == duration else args.duration
    limit = TARGET * duration

    def shown(value: float) -> str:
        return f"{value:.2f}s" if value != float("inf") else f"> {args.cap:g}s (not started)"

    print_table(
        f"Fairness: A floods {args.jobs} jobs of {args.duration:g}s, then B submits one "
        f"({args.concurrency} worker slots)",
        ["", "B waits", "in job durations"],
        [["Longrun (fair scheduler)", shown(ours), f"{ours / duration:.2f}"],
         ["Celery FIFO (baseline)", shown(base) + (f", {ahead} of A's jobs ahead" if ahead > 0 else ""),
          f"{base / duration:.2f}" if base != float("inf") else f"> {args.cap / duration:.0f}"]],
        notes=[f"one job's duration: {duration:.2f}s (median of A's attempts on the Longrun worker, start to end; "
               f"the task sleeps {args.duration:g}s)"],
    )
    shown_base = base if base != float("inf") else args.cap
    print(f"ratio (Celery / Longrun): {ratio(shown_base, ours)}{' (at least)' if base == float('inf') else ''}")
    print(f"target: B waits <= {TARGET:g} x one job's duration ({limit:.2f}s): "
          f"{'MET' if ours <= limit else 'MISSED'} ({shown(ours)})")


if __name__ == "__main__":
    main()
