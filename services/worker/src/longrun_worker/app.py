"""The worker's Celery app: one Celery task per Longrun task, plus the process-level hooks."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlmodel import Session, select

from longrun_common import forkguard, telemetry
from longrun_common.celery_app import create_celery
from longrun_common.db import create_db_engine
from longrun_common.events import JobError
from longrun_common.keys import Keys
from longrun_common.maintenance import Maintenance
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_common.states import JobStatus

from . import broker, fairshare, metrics, tasks  # noqa: F401  (tasks: registers the built-in tasks)
from .api import REGISTRY, TaskDefinition
from .catalog import register_catalog
from .presence import announce_presence
from .resources import get_resources, reset_resources
from .runner import run_attempt
from .timeouts import end_timed_out_attempt, request_class

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings) -> Celery:
    """A Celery app that runs every registered Longrun task."""
    check_visibility_timeout(settings)
    broker.install()  # keeps the worker alive through Redis outages (kombu defect, see broker.py)
    app = create_celery(settings)
    request = request_class(settings, app)
    app.conf.worker_consumer = "longrun_worker.consumer:Consumer"  # task events sent in batches (consumer.py)
    # Every log line written during a job says which job, attempt and trace (longrun_common.telemetry).
    telemetry.install_log_fields()
    app.conf.worker_log_format = "[%(asctime)s: %(levelname)s/%(processName)s]%(longrun_job)s %(message)s"
    app.conf.worker_task_log_format = (
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]:%(longrun_job)s %(message)s")
    for definition in REGISTRY.values():
        _register(app, settings, definition, request)
    _connect_process_hooks(app, settings)
    return app


def _register(app: Celery, settings: Settings, definition: TaskDefinition, request: type[Request]) -> None:
    def run(self: Task, job_id: str, attempt: int = 1) -> None:
        started = time.monotonic()
        try:
            run_attempt(self, definition, get_resources(settings, app), job_id, attempt)
        except Retry:
            raise
        except Exception as exc:
            # A soft limit is a signal: it can interrupt a SQL or Redis command and leave its connection
            # mid-protocol (psycopg: "another command is already in progress"), so nothing below trusts them.
            reset_resources()
            if not (_is_soft_limit(exc) or _soft_limit_passed(self, started)):
                raise
            # It fired outside the task's own code (before it began, or while the runner recorded an outcome,
            # whose writes then failed): the attempt still ends, or the job would wait for a message that was
            # acknowledged.
            worker = str(self.request.hostname or "worker")
            end_timed_out_attempt(get_resources(settings, app), job_id, attempt, worker,
                                  "soft time limit exceeded outside the task's code")
        finally:
            if _soft_limit_passed(self, started):
                reset_resources()  # the next message this process runs starts on clean connections

    run.__name__ = run.__qualname__ = definition.name.replace(".", "_")
    run.__doc__ = definition.description
    app.task(
        name=definition.name,
        bind=True,
        shared=False,  # each app runs its own callable, bound to its own settings
        max_retries=None,  # the job's own attempt budget decides; Celery only carries the retry message
        acks_late=True,
        reject_on_worker_lost=True,
        Request=request,  # records hard timeouts, releases the claim on ack (timeouts.py)
        soft_time_limit=definition.policy.soft_time_limit,
        # Every job has a hard limit, so none can outlive the broker's visibility timeout and be redelivered
        # while it still runs.
        time_limit=definition.policy.time_limit or definition.policy.max_time_limit,
    )(run)


def _is_soft_limit(exc: BaseException) -> bool:
    """SoftTimeLimitExceeded, also when SQLAlchemy wrapped it (StatementError) or it caused another error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SoftTimeLimitExceeded) or isinstance(getattr(current, "orig", None),
                                                                    SoftTimeLimitExceeded):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _soft_limit_passed(task: Task, started: float) -> bool:
    """Whether this message's soft limit (its own, or the task's default) has fired by now."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    soft = limits[1] if len(limits) > 1 and limits[1] else task.soft_time_limit
    return bool(soft) and time.monotonic() - started >= float(soft)


def check_visibility_timeout(settings: Settings) -> None:
    """Refuse to start if a task may run longer than Redis keeps a message invisible."""
    for definition in REGISTRY.values():
        longest = definition.policy.max_time_limit
        if longest >= settings.visibility_timeout:
            raise ValueError(
                f"task {definition.name} may run {longest:g}s but LONGRUN_VISIBILITY_TIMEOUT is "
                f"{settings.visibility_timeout}s; raise the visibility timeout above the longest task"
            )


def _connect_process_hooks(app: Celery, settings: Settings) -> None:
    state: dict[str, Any] = {}
    keys = Keys(settings.key_prefix)

    def publish_catalog(sender: Any = None, **_: Any) -> None:
        engine = create_db_engine(settings)
        try:
            log.info("task catalog: %s", ", ".join(register_catalog(engine)))
        finally:
            engine.dispose()

    def fresh_resources(**_: Any) -> None:
        # Tracing first: the engine and Redis clients made next are instrumented. After the fork, because the
        # exporter's thread does not survive one.
        telemetry.setup_tracing("longrun-worker", celery=True)
        reset_resources(pool_process=True)  # never share the parent's connections after the fork

    def task_starts(task_id: str = "", kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        # From before the task runs until after Celery logged how it ended: those lines carry the job too.
        if kwargs and "job_id" in kwargs:
            state[f"log:{task_id}"] = telemetry.enter_job(str(kwargs["job_id"]), int(kwargs.get("attempt", 1)))

    def task_ends(task_id: str = "", task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        fairshare.ended(app, keys, task, kwargs)
        token = state.pop(f"log:{task_id}", None)
        if token is not None:
            telemetry.leave_job(token)

    def child_exits(**_: Any) -> None:
        telemetry.shutdown_tracing()  # pool processes leave with os._exit: export what is buffered now

    def start_maintenance(sender: Any = None, **_: Any) -> None:
        hostname = str(getattr(sender, "hostname", ""))
        res = get_resources(settings, app)
        forkguard.install()  # before the first thread that uses the database: see forkguard.py
        state["presence"] = announce_presence(res, settings, hostname)
        if settings.maintenance:
            state["maintenance"] = Maintenance(res.store, settings, owner=hostname, on_lost=_on_lost).start()
        prefix = f"{res.keys.prefix}."
        for queue in app.amqp.queues.consume_from or {}:
            metrics.queues_consumed.labels(str(queue).removeprefix(prefix)).set(1)
        if settings.worker_metrics_port:
            state["metrics"] = metrics.serve(settings.worker_metrics_port, settings.bind_host)

    def record_claim(sender: Any = None, request: Any = None, **_: Any) -> None:
        """A message this worker has taken off the queue: if the worker dies before running it, the reconciler
        sees the claim of a worker that is gone and sends the job again."""
        kwargs = getattr(request, "kwargs", None) or {}
        if "job_id" not in kwargs:
            return
        fairshare.received(app, keys, request)
        res = get_resources(settings, app)
        try:
            res.redis.hset(res.keys.job(str(kwargs["job_id"])), "claim",
                           f"{kwargs.get('attempt', 1)}:{request.hostname}")
        except Exception:  # a Redis blip must not stop the consumer; the job still runs
            log.warning("could not record the claim of job %s", kwargs["job_id"], exc_info=True)

    def drain(sender: Any = None, **_: Any) -> None:
        hostname = str(sender or "")
        metrics.drains.inc()
        if "maintenance" in state:
            state["maintenance"].set()  # presence stays: the worker is alive while it drains
        threading.Thread(target=_drain_after, args=(settings, app, hostname), daemon=True,
                         name="longrun-drain").start()

    signals.worker_init.connect(publish_catalog, weak=False)
    signals.worker_process_init.connect(fresh_resources, weak=False)
    signals.worker_process_shutdown.connect(child_exits, weak=False)
    signals.task_prerun.connect(task_starts, weak=False)
    signals.task_postrun.connect(task_ends, weak=False)
    signals.worker_ready.connect(start_maintenance, weak=False)
    signals.task_received.connect(record_claim, weak=False)
    signals.worker_shutting_down.connect(drain, weak=False)


def _on_lost(job: Job, error: JobError, retried: bool) -> None:
    """The reaper ended an attempt whose worker vanished."""
    if retried:
        metrics.record_retry(job.task, error.type)


def _drain_after(settings: Settings, app: Celery, hostname: str) -> None:
    """After the drain window, ask this worker's still-running jobs to checkpoint and go back to the queue."""
    time.sleep(settings.drain_seconds)
    res = get_resources(settings, app)
    with forkguard.held(), Session(res.engine) as session:
        running = list(session.exec(select(Job).where(Job.status == JobStatus.RUNNING.value, Job.worker == hostname)))
    for job in running:
        log.warning("drain window over; asking job %s to checkpoint and requeue", job.id)
        res.redis.hset(res.keys.job(job.id), "drain", str(job.attempt))
