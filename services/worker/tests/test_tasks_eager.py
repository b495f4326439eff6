"""Task logic in eager mode (task_always_eager), as in the original tutorial: fast, in-process, with the
real Redis and SQLite underneath."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from pydantic import BaseModel

from longrun_common.jobs import JobStore
from longrun_common.settings import Settings
from longrun_worker.api import task
from longrun_worker.app import create_worker_app
from longrun_worker.context import JobContext
from longrun_worker.resources import reset_resources
from tests.support.jobs import assert_progress_monotonic, close_store, events, make_store, new_job, store_file

pytestmark = pytest.mark.integration


@pytest.fixture
def eager(
    sqlite_url: str, redis_url: str, key_prefix: str, tmp_path: object
) -> Iterator[tuple[Celery, JobStore, Settings]]:
    settings = Settings(database_url=sqlite_url, redis_url=redis_url, key_prefix=key_prefix,
                        storage_dir=str(tmp_path), progress_interval=0.0)
    app = create_worker_app(settings)
    app.conf.task_always_eager = True
    store = make_store(settings, with_celery=False)
    reset_resources()
    yield app, store, settings
    reset_resources()
    close_store(store)
    app.close()


def run(app: Celery, store: JobStore, task: str, args: dict[str, object]) -> str:
    job = store.submit(new_job(task, args))
    app.tasks[task].delay(job_id=job.id, attempt=1)
    return job.id


def test_demo_steps_runs_to_100(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, _ = eager
    job_id = run(app, store, "demo.steps", {"steps": 5})
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded"
    assert job.result == {"steps": 5, "steps_run": 5, "resumed_from": 0, "attempt": 1}
    evs = events(store, job_id)
    assert_progress_monotonic(evs)
    assert evs[-1]["status"] == "succeeded" and evs[-1]["progress"]["percent"] == 100.0


def test_demo_steps_retries_and_resumes_from_checkpoint(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, _ = eager
    job_id = run(app, store, "demo.steps", {"steps": 10, "fail_times": 2})
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded" and job.attempt == 3
    assert job.result["resumed_from"] > 0 and job.result["steps_run"] < 10
    statuses = [e["status"] for e in events(store, job_id)]
    assert statuses.count("retrying") == 2
    assert [a.status for a in store.attempts(job_id)] == ["retrying", "retrying", "succeeded"]


def test_checksum(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, settings = eager
    content = b"longrun" * 300_000
    stored = store_file(store, settings, "blob.bin", content)
    job_id = run(app, store, "files.checksum", {"file_id": stored.id})
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job.error
    assert job.result["sha256"] == stored.sha256 and job.result["size"] == len(content)


def test_csv_profile(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, settings = eager
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "price", "city", "when"])
    for i in range(1, 501):
        writer.writerow([i, f"{i * 1.5:.2f}", ["Oslo", "Lima", ""][i % 3], f"2024-01-{i % 28 + 1:02d}"])
    stored = store_file(store, settings, "data.csv", buffer.getvalue().encode())
    job_id = run(app, store, "csv.profile", {"file_id": stored.id})
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job.error
    result = job.result
    assert result["rows"] == 500
    columns = {c["name"]: c for c in result["columns"]}
    assert columns["id"]["type"] == "integer" and columns["id"]["min"] == 1 and columns["id"]["max"] == 500
    assert columns["price"]["type"] == "float"
    assert columns["city"]["nulls"] == 167 and columns["city"]["distinct_estimate"] == 2
    assert columns["when"]["type"] == "date"


def test_csv_profile_rejects_binary_with_clear_error(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, settings = eager
    stored = store_file(store, settings, "image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    job_id = run(app, store, "csv.profile", {"file_id": stored.id})
    job = store.get(job_id)
    assert job is not None and job.status == "failed" and job.attempt == 1
    assert job.error is not None and "not a CSV" in job.error["message"]


def test_missing_file_fails_without_retry(eager: tuple[Celery, JobStore, Settings]) -> None:
    app, store, _ = eager
    job_id = run(app, store, "files.checksum", {"file_id": "does-not-exist"})
    job = store.get(job_id)
    assert job is not None and job.status == "failed" and job.attempt == 1
    assert job.error is not None and "POST /v1/files" in job.error["message"]


class _NoArgs(BaseModel):
    pass


_cleaned: list[str] = []


def _cleanup(ctx: JobContext) -> None:
    _cleaned.append(ctx.job_id)


@task("test.cancellable", args=_NoArgs, on_cancel=_cleanup)
def _cancellable(ctx: JobContext, args: _NoArgs) -> None:
    for _ in range(1000):
        ctx.progress.advance(1)
        time.sleep(0.001)


def test_cancel_runs_the_on_cancel_hook(eager: tuple[Celery, JobStore, Settings]) -> None:
    _app, store, settings = eager
    job = store.submit(new_job("test.cancellable", {}))
    store.request_cancel(job.id)  # persisted; the queued job is cancelled at once...
    store.requeue(job.id)  # ...so requeue it and flag the cancel while it runs
    store.redis.hset(store.keys.job(job.id), "cancel", "1")
    worker_app = create_worker_app(settings)  # picks up the task declared in this module
    worker_app.conf.task_always_eager = True
    worker_app.tasks["test.cancellable"].delay(job_id=job.id, attempt=2)
    worker_app.close()
    done = store.get(job.id)
    assert done is not None and done.status == "cancelled"
    assert _cleaned == [job.id]


def test_visibility_timeout_must_exceed_the_longest_task(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="raise the visibility timeout"):
        create_worker_app(Settings(database_url=sqlite_url, visibility_timeout=3600))
