"""Sending a job's Celery message: one function for the gateway, the reaper, the reconciler and requeues."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .keys import Keys
from .models import Job


def send_job(celery: Celery, keys: Keys, job: Job, *, countdown: float | None = None) -> None:
    """Publish the message that runs `job.attempt` of `job` (by task name: no worker code imported).

    The message carries only the job id and the attempt: the SQL row is the system of record for args,
    and the attempt number lets a worker drop a message that a newer attempt has superseded.
    """
    options: dict[str, Any] = {"queue": keys.queue(job.queue), "task_id": f"{job.id}.{job.attempt}"}
    # The API's priority runs 0 (normal) … 9 (most urgent); kombu's Redis transport serves 0 first, and files a
    # message without a priority under 0, so every message states its priority.
    options["priority"] = 9 - max(0, min(9, job.priority))
    if job.soft_time_limit:
        options["soft_time_limit"] = job.soft_time_limit
    if job.time_limit:
        options["time_limit"] = job.time_limit
    if countdown:
        options["countdown"] = countdown
    celery.send_task(job.task, kwargs={"job_id": job.id, "attempt": job.attempt}, **options)
