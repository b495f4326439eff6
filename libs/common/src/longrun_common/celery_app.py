"""The Celery app factory, configured for long jobs."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from .broker import PRIORITY_SEPARATOR
from .dispatch import attach_scheduler
from .fairness import Scheduler
from .keys import Keys
from .redis_clients import CONNECT_TIMEOUT, sync_redis
from .sentinel import kombu_broker
from .settings import Settings


def create_celery(settings: Settings, *, name: str = "longrun") -> Celery:
    """A Celery app on the broker Redis (LONGRUN_BROKER_URL, else LONGRUN_REDIS_URL), every queue and key under
    the Longrun prefix."""
    keys = Keys(settings.key_prefix)
    broker, sentinel_options = kombu_broker(settings.celery_broker_url)  # a Sentinel URL becomes kombu's form
    app = Celery(name, broker=broker, set_as_current=False)
    app.conf.update(
        # Long jobs: take one at a time, acknowledge after running, give a lost worker's job back.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        broker_transport_options={
            # Above the longest allowed job, so Redis never redelivers a job that is still running;
            # a lost worker is noticed by the lease reaper in seconds instead.
            "visibility_timeout": settings.visibility_timeout,
            "global_keyprefix": f"{settings.key_prefix}:celery:",
            # Ten priority levels (kombu's default is four), served lowest number first.
            "priority_steps": list(range(10)),
            "queue_order_strategy": "priority",
            # Bound a (re)connect to a Redis host that does not answer, as every other client does
            # (redis_clients.py): kombu's default waits as long as the OS does (minutes), with the worker's
            # event loop standing still meanwhile.
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_keepalive": True,
            **sentinel_options,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=keys.queue(settings.default_queue),
        # Every configured queue (LONGRUN_QUEUES) is declared, so `queue=` routes to any of them; a worker
        # consumes the subset its -Q names (LONGRUN_WORKER_QUEUES).
        task_queues=[_queue(keys.queue(name)) for name in settings.queue_names],
        # No `task-sent` event per message (gateway submits, workflow releases, the fair dispatcher's hand-offs):
        # a second Redis publish that doubled the cost of a send and kept it off the direct LPUSH path
        # (broker.py). Flower still follows every task through the worker's received/started/... events.
        task_send_sent_event=False,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_channel_error_retry=True,
    )
    if settings.fair_window > 0:  # every job then goes through the fair dispatcher (dispatch.send_job)
        attach_scheduler(app, Scheduler(
            sync_redis(settings.celery_broker_url), keys, settings.fair_window, settings.tenant_concurrency,
            settings.tenant_concurrency_limits(), PRIORITY_SEPARATOR,
        ))
    return app


def _queue(name: str) -> Queue:
    """A queue with its own direct exchange and routing key, so `queue=` routes exactly there."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
