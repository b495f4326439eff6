"""The worker's part in fair scheduling (longrun_common.fairness): when the worker takes a message, the queue it
came from is refilled at once (the next message is ready when a slot frees); when a task ends and tenants have
concurrency limits, its job stops counting against its tenant's limit and the queue is refilled again."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from longrun_common.dispatch import dispatch_queue, scheduler_for
from longrun_common.keys import Keys

from . import offloop

log = logging.getLogger(__name__)


def received(app: Celery, keys: Keys, request: Any) -> None:
    """This worker took a message off the queue (main process, `task_received`): refill the queue at once (on the
    off-loop thread).

    Here rather than when the task starts in its pool process: a soft time limit can fire there before the task
    runs, and Celery's signal dispatch would swallow it inside a hook, letting the job run past its limit.
    """
    queue = _longrun_queue(app, keys, getattr(request, "delivery_info", None), getattr(request, "kwargs", None))
    if queue is not None:  # off the consumer's loop, which would otherwise wait for the script (offloop.py)
        offloop.call_soon(("refill", queue), lambda: _dispatch(app, keys, queue, ()))


def ended(app: Celery, keys: Keys, task: Any, kwargs: dict[str, Any] | None) -> None:
    """The task ended (pool process, `task_postrun`): its job stops counting against its tenant's concurrency
    limit, and the queue is refilled. Without limits nothing counted it, and the take of the next message refills
    the queue: no call at all (a fan-out's short steps each spared a script run)."""
    scheduler = scheduler_for(app)
    if scheduler is None or not scheduler.limited:
        return
    info = getattr(getattr(task, "request", None), "delivery_info", None)
    queue = _longrun_queue(app, keys, info, kwargs)
    if queue is not None and kwargs is not None:
        _dispatch(app, keys, queue, (str(kwargs["job_id"]),))


def _longrun_queue(app: Celery, keys: Keys, delivery_info: dict[str, Any] | None,
                   kwargs: dict[str, Any] | None) -> str | None:
    """The Longrun queue a job's message came from; None without a fair scheduler or for another message."""
    if scheduler_for(app) is None or not kwargs or "job_id" not in kwargs:
        return None
    routing = str((delivery_info or {}).get("routing_key") or "")
    prefix = keys.queue("")
    return routing[len(prefix):] if routing.startswith(prefix) else None


def _dispatch(app: Celery, keys: Keys, queue: str, ended_jobs: tuple[str, ...]) -> None:
    try:
        dispatch_queue(app, keys, queue, ended_jobs)
    except Exception:  # a Redis blip must not fail the task; maintenance dispatches and re-counts as a backstop
        log.warning("fair dispatch on %s failed", queue, exc_info=True)
