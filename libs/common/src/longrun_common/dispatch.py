"""Sending a job's Celery message: one function for the gateway, the reaper, the reconciler and requeues."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

from . import telemetry
from .broker import PRIORITY_SEPARATOR, Message, TaskMessages
from .keys import Keys
from .models import Job

URGENT = 9


def send_job(celery: Celery, keys: Keys, job: Job, *, countdown: float | None = None, urgent: bool = False) -> None:
    """Publish the message that runs `job.attempt` of `job` (by task name: no worker code imported).

    The message carries only the job id and the attempt: the SQL row is the system of record for args,
    and the attempt number lets a worker drop a message that a newer attempt has superseded. `urgent` puts a
    recovered job (its worker died, its message was lost) ahead of the queue it had already waited through.
    Raises kombu's OperationalError when the broker cannot be reached.
    """
    sender = None if countdown else _direct(celery)
    if sender is None:
        _send_task(celery, keys, job, countdown=countdown, urgent=urgent)
    else:
        sender.publish([_message(keys, job, urgent)])


def send_jobs(celery: Celery, keys: Keys, jobs: Sequence[Job]) -> None:
    """`send_job` for many jobs, in order, pipelined in one round trip where the broker allows (a batch
    submit). On a broker failure some leading messages may have been sent; the caller cannot tell which."""
    sender = _direct(celery)
    if sender is None:
        with celery.producer_or_acquire() as producer, producer.batch():  # kombu pipelines the LPUSHes
            for job in jobs:
                celery.send_task(job.task, kwargs=_kwargs(job), producer=producer, **_options(keys, job))
        return
    sender.publish([_message(keys, job, False) for job in jobs])


def _direct(celery: Celery) -> TaskMessages | None:
    """The direct LPUSH path, when it sends exactly what `send_task` would (see broker.py)."""
    if telemetry.enabled() or celery.conf.task_send_sent_event:
        return None  # the Celery instrumentation's headers and `task-sent` events come from send_task's signals
    return TaskMessages.of(celery)


def _priority(job: Job, urgent: bool) -> int:
    # The API's priority runs 0 (normal) … 9 (most urgent); kombu's Redis transport serves 0 first, and files a
    # message without a priority under 0, so every message states its priority.
    return 9 - (URGENT if urgent else max(0, min(9, job.priority)))


def _kwargs(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "attempt": job.attempt}


def _message(keys: Keys, job: Job, urgent: bool) -> Message:
    return Message(job.task, f"{job.id}.{job.attempt}", keys.queue(job.queue), _priority(job, urgent), _kwargs(job),
                   soft_time_limit=job.soft_time_limit or None, time_limit=job.time_limit or None)


def _options(keys: Keys, job: Job, urgent: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {"queue": keys.queue(job.queue), "task_id": f"{job.id}.{job.attempt}",
                               "priority": _priority(job, urgent)}
    if job.soft_time_limit:
        options["soft_time_limit"] = job.soft_time_limit
    if job.time_limit:
        options["time_limit"] = job.time_limit
    return options


def _send_task(celery: Celery, keys: Keys, job: Job, *, countdown: float | None, urgent: bool) -> None:
    options = _options(keys, job, urgent)
    if countdown:
        options["countdown"] = countdown
    celery.send_task(job.task, kwargs=_kwargs(job), **options)


def announce_attempt_end(celery: Celery, *, task_id: str, hostname: str, error_type: str, message: str,
                         retried: bool) -> None:
    """Tell Flower that an attempt ended without its worker saying so (the worker vanished, or its pool process
    was killed to force a cancel): Flower saw `task-started` and nothing since, and would show the task STARTED
    forever. Sent as that worker (`hostname`), for the attempt's task id: FAILURE, or RETRY when it retries."""
    if not celery.conf.worker_send_task_events:
        return
    exception = f"{error_type}: {message}"
    with celery.events.default_dispatcher(hostname=hostname) as dispatcher:
        dispatcher.send("task-retried" if retried else "task-failed", uuid=task_id, exception=exception,
                        traceback=f"recorded by the Longrun reaper: {exception}")


def queue_depth(client: redis.Redis[bytes], keys: Keys, queue: str) -> int:
    """Messages waiting in a Longrun queue, over all its priority levels."""
    base = f"{keys.prefix}:celery:{keys.queue(queue)}"
    pipe = client.pipeline(transaction=False)
    pipe.llen(base)
    for level in range(1, 10):
        pipe.llen(f"{base}{PRIORITY_SEPARATOR}{level}")
    return sum(int(n) for n in pipe.execute())
