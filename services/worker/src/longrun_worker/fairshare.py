"""The worker's part in fair scheduling (longrun_common.fairness): when a task starts, the queue it came from
is refilled at once (the next message is ready when a slot frees); when it ends, its job stops counting against
its tenant's concurrency limit and the queue is refilled again."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from longrun_common.dispatch import dispatch_queue, scheduler_for
from longrun_common.keys import Keys

log = logging.getLogger(__name__)

# task id → (Longrun queue, job id) of the tasks this process is running, from start to end.
_running: dict[str, tuple[str, str]] = {}


def started(app: Celery, keys: Keys, task: Any, task_id: str, kwargs: dict[str, Any] | None) -> None:
    if scheduler_for(app) is None or not kwargs or "job_id" not in kwargs:
        return
    info = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    routing = str(info.get("routing_key") or "")
    prefix = keys.queue("")
    if not routing.startswith(prefix):
        return  # not one of Longrun's queues
    queue = routing[len(prefix):]
    _running[task_id] = (queue, str(kwargs["job_id"]))
    _dispatch(app, keys, queue, ())


def ended(app: Celery, keys: Keys, task_id: str) -> None:
    entry = _running.pop(task_id, None)
    if entry is not None:
        _dispatch(app, keys, entry[0], (entry[1],))


def _dispatch(app: Celery, keys: Keys, queue: str, ended_jobs: tuple[str, ...]) -> None:
    try:
        dispatch_queue(app, keys, queue, ended_jobs)
    except Exception:  # a Redis blip must not fail the task; maintenance dispatches and re-counts as a backstop
        log.warning("fair dispatch on %s failed", queue, exc_info=True)
