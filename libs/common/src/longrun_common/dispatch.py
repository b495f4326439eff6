"""Sending a job's Celery message: one function for the gateway, the reaper, the reconciler and requeues."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from . import telemetry
from .broker import PRIORITY_SEPARATOR, Message, TaskMessages
from .fairness import DELAYED, Scheduler, Spec, ready_entry
from .keys import Keys
from .models import Job

URGENT = 9


# The fair scheduler of each Celery app that has one (celery_app.create_celery attaches it; an app without one,
# or LONGRUN_FAIR_WINDOW=0, sends every message straight to the queue: plain FIFO).
_SCHEDULERS: weakref.WeakKeyDictionary[Celery, Scheduler] = weakref.WeakKeyDictionary()


def attach_scheduler(celery: Celery, scheduler: Scheduler | None) -> None:
    if scheduler is None:
        _SCHEDULERS.pop(celery, None)
    else:
        _SCHEDULERS[celery] = scheduler


def scheduler_for(celery: Celery) -> Scheduler | None:
    return _SCHEDULERS.get(celery)


def is_delayed(job: Job, now: datetime | None = None) -> bool:
    """The job waits in SQL for its `run_at` (maintenance releases it on time: delayed.py)."""
    if job.run_at is None:
        return False
    run_at = job.run_at if job.run_at.tzinfo else job.run_at.replace(tzinfo=UTC)  # SQLite: naive, written as UTC
    return run_at > (now or datetime.now(UTC))


def send_job(celery: Celery, keys: Keys, job: Job, *, countdown: float | None = None,
             urgent: bool = False) -> str | None:
    """Send the job's message, or hold it: returns why it is held (`queued_reason`), None once it is on the queue.

    `send_jobs` with one job, except that a retry with a countdown goes straight to the queue (Celery's eta).
    Raises kombu's OperationalError when the broker cannot be reached.
    """
    if countdown and not is_delayed(job):
        publish(celery, keys, [_spec(job)], countdown=countdown, urgent=urgent)
        return None
    return send_jobs(celery, keys, [job], urgent=urgent)[0]


def send_jobs(celery: Celery, keys: Keys, jobs: Sequence[Job], *, urgent: bool = False) -> list[str | None]:
    """Send (or hold) every job's message, in order: each job's `queued_reason` (None once it is on the queue).

    A delayed job stays in SQL until its run_at (DELAYED). Otherwise, with a fair scheduler, the jobs join their
    tenants' pending sets (one script call per queue, whatever the number of jobs) and what the dispatcher
    releases is published (fairness.py); without one, or for `urgent` jobs (recovered from a dead worker), the
    messages go straight to the queue, pipelined in one round trip where the broker allows.
    On a broker failure some leading messages may have been sent; the caller cannot tell which.
    """
    scheduler = scheduler_for(celery)
    reasons: list[str | None] = [None] * len(jobs)
    direct: list[Spec] = []
    held: dict[str, list[tuple[int, Spec]]] = {}  # queue -> (index in jobs, spec)
    for index, job in enumerate(jobs):
        if is_delayed(job):
            reasons[index] = DELAYED
        elif scheduler is None or urgent:
            direct.append(_spec(job))
        else:
            held.setdefault(job.queue, []).append((index, _spec(job)))
    if direct:
        publish(celery, keys, direct, urgent=urgent)
    if scheduler is not None:
        sender = _direct(celery) if held else None
        for queue, entries in held.items():
            specs = [spec for _, spec in entries]
            ready_messages = [_ready_entry(sender, keys, spec) for spec in specs] if sender is not None else None
            why, ready = scheduler.enqueue(specs, ready_messages)
            for (index, _), reason in zip(entries, why, strict=True):
                reasons[index] = reason
            _publish_released(celery, keys, scheduler, queue, ready)
    return reasons


def _ready_entry(sender: TaskMessages, keys: Keys, spec: Spec) -> bytes:
    """The held job's message, built now so that whichever process dispatches it later (a worker taking or
    ending a task) LPUSHes it inside the dispatcher's script: no round trip back, no message built there."""
    message = _message(keys, spec, False)
    return ready_entry(sender.key(message.queue, message.priority), sender.build(message))


def dispatch_queue(celery: Celery, keys: Keys, queue: str, ended: Iterable[str] = ()) -> int:
    """Release the jobs whose attempt `ended` and publish what the fair dispatcher lets go now (a worker
    starting or finishing a task, maintenance's backstop). Returns how many messages were published."""
    scheduler = scheduler_for(celery)
    if scheduler is None:
        return 0
    ready = scheduler.dispatch(queue, ended)
    _publish_released(celery, keys, scheduler, queue, ready)
    return len(ready)


def _spec(job: Job) -> Spec:
    return Spec(job.id, job.tenant, job.task, job.queue, job.attempt, job.priority, job.soft_time_limit,
                job.time_limit)


def _publish_released(celery: Celery, keys: Keys, scheduler: Scheduler, queue: str, specs: list[Spec]) -> None:
    sender = _direct(celery) if specs else None
    if sender is not None:
        # One round trip: the messages and the scheduler's count of the ones being sent, both on the broker's
        # Redis (the direct path runs only on a plain redis:// broker, the URL the scheduler was made with). If it
        # fails, the count's short TTL (fairness.SENDING_TTL_MS) forgets it, as after a dispatcher that died.
        sender.publish([_message(keys, spec, False) for spec in specs],
                       then=lambda pipe: scheduler.published(queue, len(specs), pipe))
        return
    try:
        if specs:
            publish(celery, keys, specs)
    finally:
        scheduler.published(queue, len(specs))


def publish(celery: Celery, keys: Keys, specs: Sequence[Spec], *, countdown: float | None = None,
            urgent: bool = False) -> None:
    """Publish the messages that run `spec.attempt` of job `spec.id` (by task name: no worker code imported),
    in order, pipelined in one round trip on the direct path.

    The message carries only the job id and the attempt: the SQL row is the system of record for args,
    and the attempt number lets a worker drop a message that a newer attempt has superseded. `urgent` puts a
    recovered job (its worker died, its message was lost) ahead of the queue it had already waited through.
    Raises kombu's OperationalError when the broker cannot be reached.
    """
    sender = None if countdown else _direct(celery)
    if sender is not None:
        sender.publish([_message(keys, spec, urgent) for spec in specs])
    elif len(specs) == 1:
        _send_task(celery, keys, specs[0], countdown=countdown, urgent=urgent)
    else:
        with celery.producer_or_acquire() as producer, producer.batch():  # kombu pipelines the LPUSHes
            for spec in specs:
                celery.send_task(spec.task, kwargs=_kwargs(spec), producer=producer, **_options(keys, spec, urgent))


def _direct(celery: Celery) -> TaskMessages | None:
    """The direct LPUSH path, when it sends exactly what `send_task` would (see broker.py)."""
    if telemetry.enabled() or celery.conf.task_send_sent_event:
        return None  # the Celery instrumentation's headers and `task-sent` events come from send_task's signals
    return TaskMessages.of(celery)


def _priority(spec: Spec, urgent: bool) -> int:
    # The API's priority runs 0 (normal) … 9 (most urgent); kombu's Redis transport serves 0 first, and files a
    # message without a priority under 0, so every message states its priority.
    return 9 - (URGENT if urgent else max(0, min(9, spec.priority)))


def _kwargs(spec: Spec) -> dict[str, Any]:
    return {"job_id": spec.id, "attempt": spec.attempt}


def _message(keys: Keys, spec: Spec, urgent: bool) -> Message:
    return Message(spec.task, f"{spec.id}.{spec.attempt}", keys.queue(spec.queue), _priority(spec, urgent),
                   _kwargs(spec), soft_time_limit=spec.soft_time_limit or None, time_limit=spec.time_limit or None)


def _options(keys: Keys, spec: Spec, urgent: bool = False) -> dict[str, Any]:
    options: dict[str, Any] = {"queue": keys.queue(spec.queue), "task_id": f"{spec.id}.{spec.attempt}",
                               "priority": _priority(spec, urgent)}
    if spec.soft_time_limit:
        options["soft_time_limit"] = spec.soft_time_limit
    if spec.time_limit:
        options["time_limit"] = spec.time_limit
    return options


def _send_task(celery: Celery, keys: Keys, spec: Spec, *, countdown: float | None, urgent: bool) -> None:
    options = _options(keys, spec, urgent)
    if countdown:
        options["countdown"] = countdown
    celery.send_task(spec.task, kwargs=_kwargs(spec), **options)


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


def queue_depth(client: redis.Redis[bytes], keys: Keys, queue: str, scheduler: Scheduler | None = None) -> int:
    """Messages waiting in a Longrun queue, over all its priority levels, plus the jobs `scheduler` holds for it."""
    base = f"{keys.prefix}:celery:{keys.queue(queue)}"
    pipe = client.pipeline(transaction=False)
    pipe.llen(base)
    for level in range(1, 10):
        pipe.llen(f"{base}{PRIORITY_SEPARATOR}{level}")
    held = scheduler.held(queue) if scheduler is not None else 0
    return sum(int(n) for n in pipe.execute()) + held
