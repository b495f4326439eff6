"""Submitting and watching jobs in tests the way the gateway does, without going through HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
from sqlmodel import Session

from longrun_common.catalog import TaskPolicy
from longrun_common.celery_app import create_celery
from longrun_common.db import create_db_engine
from longrun_common.jobs import JobStore
from longrun_common.keys import Keys
from longrun_common.models import Job, StoredFile
from longrun_common.publisher import Publisher
from longrun_common.reader import Reader
from longrun_common.settings import Settings
from longrun_common.states import TERMINAL
from longrun_common.storage import file_path

TERMINAL_VALUES = {s.value for s in TERMINAL}


def make_store(settings: Settings, *, with_celery: bool = True) -> JobStore:
    keys = Keys(settings.key_prefix)
    return JobStore(
        create_db_engine(settings),
        redis.Redis.from_url(settings.redis_url),
        keys,
        Publisher(keys, stream_maxlen=settings.stream_maxlen, event_ttl_seconds=settings.event_ttl_seconds),
        create_celery(settings) if with_celery else None,
    )


def close_store(store: JobStore) -> None:
    store.engine.dispose()
    store.redis.close()
    if store.celery is not None:
        store.celery.close()


def new_job(task: str, args: dict[str, Any], *, tenant: str = "dev", **fields: Any) -> Job:
    """A job row as the gateway would build it, with the task's declared policy."""
    import longrun_worker.tasks  # noqa: F401  (registers the built-in tasks)
    from longrun_worker.api import REGISTRY  # tests may know the worker's declarations

    policy: TaskPolicy = REGISTRY[task].policy if task in REGISTRY else TaskPolicy()
    values: dict[str, Any] = {"max_attempts": policy.max_attempts, "queue": policy.queue,
                              "soft_time_limit": policy.soft_time_limit, "time_limit": policy.time_limit}
    values.update(fields)
    return Job(tenant=tenant, task=task, args=args, **values)


def submit(store: JobStore, task: str, args: dict[str, Any], **fields: Any) -> Job:
    return store.submit(new_job(task, args, **fields))


def wait_for(store: JobStore, job_ids: Iterable[str], statuses: set[str] | None = None,
             timeout: float = 60.0) -> list[Job]:
    """Wait until every job is in one of `statuses` (default: any terminal status) in SQL and in its Redis
    snapshot (SQL is written first, the event a moment later)."""
    wanted = statuses or TERMINAL_VALUES
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        jobs = [store.get(job_id) for job_id in ids]
        if all(job is not None and job.status in wanted and _redis_status(store, job.id) == job.status
               for job in jobs):
            return [job for job in jobs if job is not None]
        if time.monotonic() > deadline:
            states = {job.id: (job.status, job.attempt) for job in jobs if job is not None}
            raise TimeoutError(f"jobs not in {sorted(wanted)} after {timeout}s: {states}")
        time.sleep(0.05)


def _redis_status(store: JobStore, job_id: str) -> str | None:
    raw = store.redis.hget(store.keys.job(job_id), "status")
    return raw.decode() if raw else None


def events(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    return Reader(store.keys).events_after(store.redis, job_id, 0)


def store_file(store: JobStore, settings: Settings, name: str, content: bytes, tenant: str = "dev") -> StoredFile:
    """Put a file where the gateway's upload would, and record it."""
    row = StoredFile(tenant=tenant, name=name, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    path: Path = file_path(settings, tenant, row.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with Session(store.engine) as session:
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def assert_progress_monotonic(evs: list[dict[str, Any]]) -> None:
    """Seq contiguous from 1; within an attempt, progress never goes backwards."""
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "seq must be contiguous from 1"
    last: dict[int, float] = {}
    for event in evs:
        current = event["progress"].get("current")
        if current is None:
            continue
        attempt = event["attempt"]
        assert current >= last.get(attempt, float("-inf")), f"progress went backwards at seq {event['seq']}"
        last[attempt] = current


def queued_messages(client: redis.Redis[bytes], prefix: str, queue: str = "default") -> list[dict[str, Any]]:
    """Celery messages waiting in a Longrun queue: kombu prefixes its keys with `{p}:celery:` and keeps each
    priority level but the first in a sub-list `{queue}\\x06\\x16{level}` (levels 0-9, see celery_app.py)."""
    base = f"{prefix}:celery:{prefix}.{queue}"
    names = [base] + [f"{base}\x06\x16{level}" for level in range(1, 10)]
    return [json.loads(item) for name in names for item in client.lrange(name, 0, -1)]


def waiting_job_ids(client: redis.Redis[bytes], prefix: str, queue: str = "default") -> list[str]:
    """Jobs waiting to run on a Longrun queue: those with a Celery message on it, then those the fair scheduler
    holds back for it (longrun_common.fairness: only a few messages sit on the queue at a time)."""
    sent = [json.loads(base64.b64decode(str(m["body"])))[1]["job_id"] for m in queued_messages(client, prefix, queue)]
    held = [member.decode() for name in client.scan_iter(match=f"{prefix}:fair:{queue}:pending:*")
            for member in client.zrange(name, 0, -1)]
    return sent + held
