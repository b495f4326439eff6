"""Fairness between tenants, concurrency limits and delayed jobs (longrun_common.fairness, held.py), on real Redis
and SQL; the last tests run real worker processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from longrun_common.dispatch import dispatch_queue, queue_depth, scheduler_for
from longrun_common.fairness import Spec
from longrun_common.jobs import JobStore
from longrun_common.maintenance import Maintenance
from longrun_common.models import Attempt, Job
from longrun_common.reader import Reader
from longrun_common.settings import Settings
from longrun_common.views import job_view
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import close_store, make_store, new_job, queued_messages, submit, wait_for

WINDOW = 2


def _take(store: JobStore, count: int = 1) -> list[str]:
    """What a worker does to the queue: take messages off it (kombu serves priority 0 = most urgent first)."""
    taken = []
    for _ in range(count):
        if not queued_messages(store.redis, store.keys.prefix):
            break
        base = f"{store.keys.prefix}:celery:{store.keys.queue('default')}"
        names = [base] + [f"{base}\x06\x16{level}" for level in range(1, 10)]
        raw = next(store.redis.rpop(name) for name in names if store.redis.llen(name))
        taken.append(json.loads(raw)["headers"]["id"].rsplit(".", 1)[0])
    return taken


def _view(store: JobStore, job_id: str) -> dict[str, Any]:
    job = store.get(job_id)
    assert job is not None
    return job_view(job, Reader(store.keys).snapshot(store.redis, job_id))


@pytest.fixture
def limited(settings: Settings) -> Iterator[JobStore]:
    """A store whose scheduler lets tenant `acme` run one job at a time."""
    store = make_store(settings.model_copy(update={"tenant_limits": "acme:concurrency=1"}))
    yield store
    close_store(store)


def test_a_new_tenant_is_served_before_another_tenants_backlog(job_store: JobStore) -> None:
    backlog = [submit(job_store, "demo.steps", {"steps": 1}, tenant="a").id for _ in range(20)]
    # Only the window is on the Celery queue; the rest waits in tenant a's pending set.
    assert len(queued_messages(job_store.redis, job_store.keys.prefix)) == WINDOW
    assert _view(job_store, backlog[-1])["queued_reason"] == "fair_share"
    late = submit(job_store, "demo.steps", {"steps": 1}, tenant="b").id
    assert _view(job_store, late)["queued_reason"] == "fair_share"
    # Each job a worker takes frees one place, and b's turn comes first: b waits for the window, not the backlog.
    order = []
    for _ in range(4):
        order += _take(job_store)
        dispatch_queue(job_store.celery, job_store.keys, "default")  # type: ignore[arg-type]
    assert late in order[: WINDOW + 1], order
    assert order[:WINDOW] == backlog[:WINDOW]
    # Nothing was lost or doubled: every job is either taken, on the queue, or held.
    scheduler = scheduler_for(job_store.celery)  # type: ignore[arg-type]
    depth = queue_depth(job_store.redis, job_store.keys, "default", scheduler)
    assert len(order) + depth == len(backlog) + 1
    # No tenant has a limit: nothing counts the jobs in flight (so a task's end has nothing to release).
    assert scheduler is not None and not scheduler.limited and scheduler.inflight() == {}


def test_priority_still_orders_a_tenants_jobs(job_store: JobStore) -> None:
    for _ in range(WINDOW):
        submit(job_store, "demo.steps", {"steps": 1})
    low = submit(job_store, "demo.steps", {"steps": 1}).id
    high = submit(job_store, "demo.steps", {"steps": 1}, priority=9).id
    _take(job_store, WINDOW)
    dispatch_queue(job_store.celery, job_store.keys, "default")  # type: ignore[arg-type]
    assert _take(job_store, WINDOW) == [high, low]


def test_the_dispatcher_pushes_a_held_message_itself_or_hands_back_a_spec(job_store: JobStore) -> None:
    """A held job waits as its ready message, which the dispatching script LPUSHes onto kombu's list unchanged
    (nothing comes back to publish, nothing counts as being sent); an entry held as a Spec (a process that sends
    through send_task held it) is handed back to the caller and published by it."""
    scheduler = scheduler_for(job_store.celery)  # type: ignore[arg-type]
    assert scheduler is not None
    jobs = [submit(job_store, "demo.steps", {"steps": 1}) for _ in range(WINDOW + 2)]
    ready, spec_held = jobs[WINDOW], jobs[WINDOW + 1]
    specs_key = f"{scheduler.shared}spec"
    entry = job_store.redis.hget(specs_key, ready.id)
    assert entry is not None
    list_key, message = entry.split(b"\n", 1)
    assert json.loads(message)["headers"]["id"] == f"{ready.id}.1"
    # The other held job as a send_task-only process holds it: its Spec's JSON.
    held_spec = Spec(spec_held.id, spec_held.tenant, spec_held.task, spec_held.queue, 1, spec_held.priority)
    job_store.redis.hset(specs_key, spec_held.id, held_spec.dumps())
    _take(job_store, WINDOW)
    assert scheduler.dispatch("default") == [held_spec]
    assert job_store.redis.lrange(list_key, 0, -1) == [message]  # pushed as it was held, byte for byte
    assert int(job_store.redis.get(f"{scheduler.shared}default:sending") or 0) == 1  # only the handed-back one
    scheduler.published("default", 1)
    assert _take(job_store, WINDOW) == [ready.id]


def test_concurrency_limit_holds_jobs_with_the_reason(limited: JobStore) -> None:
    first, second = (submit(limited, "demo.steps", {"steps": 1}, tenant="acme").id for _ in range(2))
    other = submit(limited, "demo.steps", {"steps": 1}, tenant="beta").id
    assert _view(limited, second)["queued_reason"] == "tenant_concurrency_limit"
    assert _view(limited, other)["queued_reason"] is None  # another tenant is not held by acme's limit
    assert sorted(_take(limited, 5)) == sorted([first, other])
    scheduler = scheduler_for(limited.celery)  # type: ignore[arg-type]
    assert scheduler is not None and scheduler.inflight() == {first: "acme", other: "beta"}
    dispatch_queue(limited.celery, limited.keys, "default")  # type: ignore[arg-type]
    assert _take(limited) == []  # acme's one slot is taken until its job ends
    dispatch_queue(limited.celery, limited.keys, "default", ended=[first])  # type: ignore[arg-type]
    assert _take(limited) == [second]


def test_recount_releases_a_job_whose_worker_never_said_it_ended(limited: JobStore, settings: Settings) -> None:
    first, second = (submit(limited, "demo.steps", {"steps": 1}, tenant="acme").id for _ in range(2))
    assert _take(limited, 5) == [first]
    limited.request_cancel(first)  # ended in SQL (like a reaped job); no worker event
    Maintenance(limited, settings).tick()
    assert _take(limited) == [second]


def _wipe(store: JobStore) -> None:
    """What a Redis restart without persistence does to this test's keys (never FLUSHALL: shared server)."""
    names = list(store.redis.scan_iter(match=f"{store.keys.prefix}:*", count=1000))
    if names:
        store.redis.delete(*names)


def test_a_redis_wipe_loses_no_held_job(job_store: JobStore, settings: Settings) -> None:
    ids = [submit(job_store, "demo.steps", {"steps": 1}, tenant=t).id for t in ("a", "b") for _ in range(6)]
    scheduler = scheduler_for(job_store.celery)  # type: ignore[arg-type]
    assert queue_depth(job_store.redis, job_store.keys, "default", scheduler) == len(ids)
    _wipe(job_store)
    assert queue_depth(job_store.redis, job_store.keys, "default", scheduler) == 0
    _age(job_store, ids)
    Maintenance(job_store, settings).reconcile()  # re-sends every queued job from SQL
    assert queue_depth(job_store.redis, job_store.keys, "default", scheduler) == len(ids)
    assert len(queued_messages(job_store.redis, job_store.keys.prefix)) == WINDOW
    taken: list[str] = []
    while len(taken) < len(ids):
        got = _take(job_store)
        assert got, f"only {len(taken)} of {len(ids)} jobs came back"
        taken += got
        dispatch_queue(job_store.celery, job_store.keys, "default")  # type: ignore[arg-type]
    assert sorted(taken) == sorted(ids)  # each exactly once


def _age(store: JobStore, ids: list[str], seconds: float = 5) -> None:
    """The reconciler leaves jobs changed in the last two seconds alone (their publish may be under way)."""
    with Session(store.engine) as session:
        session.execute(update(Job).where(col(Job.id).in_(ids))
                        .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds)))
        session.commit()


def test_delayed_job_waits_in_sql_and_is_released_on_time(job_store: JobStore, settings: Settings) -> None:
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)
    job = submit(job_store, "demo.steps", {"steps": 1}, run_at=run_at)
    view = _view(job_store, job.id)
    assert view["status"] == "queued" and view["queued_reason"] == "delayed" and view["run_at"] is not None
    assert queued_messages(job_store.redis, job_store.keys.prefix) == []
    maintenance = Maintenance(job_store, settings.model_copy(update={"reaper_interval": 0.1}))
    _age(job_store, [job.id], seconds=60)
    maintenance.reconcile()  # the reconciler must not send a job that waits for its time
    assert queued_messages(job_store.redis, job_store.keys.prefix) == []
    while not queued_messages(job_store.redis, job_store.keys.prefix):
        maintenance.tick()
        time.sleep(0.1)
    released = time.time()
    assert run_at.timestamp() <= released <= run_at.timestamp() + 1.0
    view = _view(job_store, job.id)
    assert view["queued_reason"] is None and view["run_at"] is None


def test_delayed_job_is_cancelled_at_once(job_store: JobStore, settings: Settings) -> None:
    # run_at leaves room for a slow submit on a loaded machine: a job whose time has already come when it is
    # dispatched is sent at once (and a worker would drop its message as cancelled), which is not this case.
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)
    job = submit(job_store, "demo.steps", {"steps": 1}, run_at=run_at)
    assert queued_messages(job_store.redis, job_store.keys.prefix) == []
    cancelled = job_store.request_cancel(job.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    time.sleep(max(0.0, run_at.timestamp() - time.time()) + 0.1)
    Maintenance(job_store, settings).tick()
    assert queued_messages(job_store.redis, job_store.keys.prefix) == []
    final = job_store.get(job.id)
    assert final is not None and final.status == "cancelled" and final.started_at is None


def test_limits_are_validated_at_start() -> None:
    with pytest.raises(ValueError, match="concurrency=x must be a whole number"):
        Settings(tenant_limits="acme:concurrency=x")
    with pytest.raises(ValueError, match="'speed=3' is not concurrency=N or rate=N"):
        Settings(tenant_limits="acme:speed=3")
    with pytest.raises(ValueError, match="listed twice"):
        Settings(tenant_limits="acme:rate=1,acme:rate=2")
    with pytest.raises(ValueError, match="LONGRUN_FAIR_WINDOW above 0"):
        Settings(tenant_concurrency=2, fair_window=0)
    parsed = Settings(tenant_limits="acme:concurrency=5:rate=20, beta:concurrency=2").tenant_overrides
    assert parsed["acme"].concurrency == 5 and parsed["acme"].rate == 20 and parsed["beta"].rate is None


# --- real workers ---------------------------------------------------------------------------------------------


def _started(store: JobStore, ids: list[str]) -> dict[str, float]:
    with Session(store.engine) as session:
        rows = session.exec(select(Attempt.job_id, Attempt.started_at).where(col(Attempt.job_id).in_(ids))).all()
    return {job_id: (s if s.tzinfo else s.replace(tzinfo=UTC)).timestamp() for job_id, s in rows}


# Fair shares and tenant limits are kept in Redis (the SQL they read is the JobStore's, run on both backends above):
# the real-worker tests run on PostgreSQL alone, as in production, each saving a worker start-up and a backlog.
@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_workers_run_a_new_tenants_job_before_the_backlog_drains(
    job_store: JobStore, services: ServiceFactory
) -> None:
    backlog = [new_job("demo.steps", {"steps": 1, "delay": 0.2}, tenant="a") for _ in range(30)]
    job_store.submit_many(backlog)
    services("worker", "--concurrency", "2")
    wait_for(job_store, [backlog[2].id], {"running", "succeeded"}, timeout=60)
    late = submit(job_store, "demo.steps", {"steps": 1, "delay": 0.2}, tenant="b")
    wait_for(job_store, [job.id for job in [*backlog, late]], timeout=120)
    started = _started(job_store, [job.id for job in [*backlog, late]])
    after = sum(1 for job in backlog if started[job.id] > started[late.id])
    assert after >= 15, f"b's job started after {len(backlog) - after} of a's 30 jobs"


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_workers_never_run_more_than_a_tenants_limit(settings: Settings, services: ServiceFactory) -> None:
    store = make_store(settings.model_copy(update={"tenant_limits": "acme:concurrency=2"}))
    try:
        ids = [submit(store, "demo.steps", {"steps": 2, "delay": 0.1}, tenant="acme").id for _ in range(8)]
        services("worker", "--concurrency", "4", env={"LONGRUN_TENANT_LIMITS": "acme:concurrency=2"})
        wait_for(store, ids, timeout=120)
        with Session(store.engine) as session:
            spans = [(_ts(a.started_at), _ts(a.finished_at)) for a in session.exec(
                select(Attempt).where(col(Attempt.job_id).in_(ids)))]
        most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
        assert most <= 2, f"{most} of acme's jobs ran at once"
    finally:
        close_store(store)


def _ts(value: datetime | None) -> float:
    assert value is not None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
