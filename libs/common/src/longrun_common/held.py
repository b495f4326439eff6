"""Maintenance for jobs held back: delayed jobs released from SQL on time, and the fair scheduler's backstop.

Both run on each maintenance tick of the leader (maintenance.py). Delayed jobs live only in SQL (`run_at`), so
no Redis loss can drop or duplicate them, and no countdown sits in a Celery message (Celery's ETA on Redis is
delivered twice once it outlasts the visibility timeout). The fair scheduler's Redis state is a cache: the
backstop dispatches every queue (in case no worker event did), and re-counts each tenant's jobs in flight
against SQL (a worker killed mid-task never says its job ended; a Redis wipe loses the counts).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from .dispatch import dispatch_queue, scheduler_for
from .jobs import ACTIVE, JobStore
from .models import Job, utcnow
from .states import JobStatus

log = logging.getLogger(__name__)

BATCH = 500  # jobs released per tick; a larger wave is released over the next ticks
MAX_ADOPTED = 1000  # running jobs re-counted per pass


def release_delayed(store: JobStore, now: datetime | None = None) -> int:
    """Send every delayed job whose run_at has come; returns how many. Clearing run_at is conditional, so two
    maintainers never both send one job; a send that fails after it is repaired by the reconciler."""
    now = now or datetime.now(UTC)
    with Session(store.engine) as session:
        due = list(session.exec(select(Job).where(
            col(Job.status) == JobStatus.QUEUED.value, col(Job.run_at).is_not(None), col(Job.run_at) <= now,
        ).order_by(col(Job.run_at)).limit(BATCH)))
    released = 0
    for job in due:
        with Session(store.engine) as session:
            result = session.execute(update(Job).where(
                col(Job.id) == job.id, col(Job.status) == JobStatus.QUEUED.value, col(Job.run_at).is_not(None),
            ).values(run_at=None, updated_at=utcnow()))
            session.commit()
        if not getattr(result, "rowcount", 0):
            continue  # cancelled, or released by another maintainer
        job.run_at = None
        released += 1
        if store.celery is not None:
            store.dispatch(job)
    if released:
        log.info("released %d delayed job(s)", released)
    return released


def dispatch_all(store: JobStore) -> int:
    """Run the fair dispatcher on every queue that holds jobs (a backstop for missed worker events)."""
    if store.celery is None or (scheduler := scheduler_for(store.celery)) is None:
        return 0
    return sum(dispatch_queue(store.celery, store.keys, queue) for queue in scheduler.queues())


def recount(store: JobStore) -> None:
    """Make the per-tenant in-flight counts match SQL: drop jobs that ended without their worker saying so,
    count running jobs the counts lost."""
    if store.celery is None or (scheduler := scheduler_for(store.celery)) is None or not scheduler.limited:
        return
    inflight = scheduler.inflight()
    ended: dict[str, list[str]] = defaultdict(list)
    if inflight:
        with Session(store.engine) as session:
            rows = dict(session.exec(select(Job.id, Job.status).where(col(Job.id).in_(list(inflight)))).all())
            queues = dict(session.exec(select(Job.id, Job.queue).where(col(Job.id).in_(list(inflight)))).all())
        for job_id in inflight:
            if rows.get(job_id) not in ACTIVE:
                ended[queues.get(job_id, "default")].append(job_id)
    for queue, job_ids in ended.items():
        dispatch_queue(store.celery, store.keys, queue, job_ids)
    with Session(store.engine) as session:
        running = dict(session.exec(select(Job.id, Job.tenant).where(
            col(Job.status) == JobStatus.RUNNING.value).limit(MAX_ADOPTED)).all())
    missing = {job_id: tenant for job_id, tenant in running.items() if job_id not in inflight}
    scheduler.adopt(missing)
