"""The direct LPUSH path (broker.py) stores exactly what Celery's `send_task` stores, in the same Redis list.

If a Celery or kombu upgrade changes the message `send_task` writes, these tests fail and broker.py must follow.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import kombu.exceptions
import pytest
import redis

from longrun_common.broker import TaskMessages
from longrun_common.celery_app import create_celery
from longrun_common.dispatch import _send_task, _spec, send_job, send_jobs
from longrun_common.keys import Keys
from longrun_common.models import Job
from longrun_common.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def celery(redis_url: str, key_prefix: str) -> Iterator[Any]:
    # Without the fair scheduler, so every send publishes at once (the scheduler decides *when*, not *what*).
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, fair_window=0)
    app = create_celery(settings, name="longrun-gateway")
    yield app
    app.close()


def _stored(client: redis.Redis, key_prefix: str) -> dict[bytes, list[dict[str, Any]]]:
    """Every message in the prefix's Celery queue lists, by list key, oldest first."""
    out = {}
    for key in client.keys(f"{key_prefix}:celery:{key_prefix}.*"):
        out[key] = [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
    return out


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without the one field that is random per publish (kombu's delivery tag)."""
    message = json.loads(json.dumps(message))
    assert message["properties"].pop("delivery_tag")
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize(
    ("priority", "soft", "hard", "queue", "urgent"),
    [(0, None, None, "default", False), (3, 5.0, 10.0, "high", False), (9, None, 30.0, "low", False),
     (2, None, None, "default", True)],
)
def test_direct_message_equals_send_task(celery: Any, redis_client: redis.Redis, key_prefix: str, priority: int,
                                         soft: float | None, hard: float | None, queue: str, urgent: bool) -> None:
    keys = Keys(key_prefix)
    job = Job(tenant="t", task="demo.steps", queue=queue, priority=priority, args={"x": 1}, max_attempts=3,
              soft_time_limit=soft, time_limit=hard, attempt=2)
    assert TaskMessages.of(celery) is not None  # a plain redis:// broker: send_job takes the direct path
    _send_task(celery, keys, _spec(job), countdown=None, urgent=urgent)
    send_job(celery, keys, job, urgent=urgent)
    stored = _stored(redis_client, key_prefix)
    assert len(stored) == 1, stored  # the same list (queue and priority level)
    [(key, (by_celery, direct))] = stored.items()
    assert key.decode().startswith(f"{key_prefix}:celery:{keys.queue(queue)}")
    assert _comparable(direct) == _comparable(by_celery)


def test_send_jobs_pipelines_in_order(celery: Any, redis_client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    jobs = [Job(tenant="t", task="demo.steps", args={}, max_attempts=1) for _ in range(5)]
    send_jobs(celery, keys, jobs)
    [messages] = _stored(redis_client, key_prefix).values()
    assert [m["headers"]["id"] for m in messages] == [f"{job.id}.1" for job in jobs]


def test_broker_down_raises_kombu_operational_error(key_prefix: str) -> None:
    # Nothing listens on port 1: the direct path reports the failure as send_task would (kombu's error).
    app = create_celery(Settings(redis_url="redis://127.0.0.1:1/0", key_prefix=key_prefix, fair_window=0), name="down")
    app.conf.task_send_sent_event = False
    job = Job(tenant="t", task="demo.steps", args={}, max_attempts=1)
    try:
        with pytest.raises(kombu.exceptions.OperationalError):
            send_job(app, Keys(key_prefix), job)
        with pytest.raises(kombu.exceptions.OperationalError):
            send_jobs(app, Keys(key_prefix), [job, job])
    finally:
        app.close()


def test_send_task_path_when_sent_events_are_on(celery: Any) -> None:
    celery.conf.task_send_sent_event = True  # `task-sent` comes from send_task's signals: no direct path
    job = Job(tenant="t", task="demo.steps", args={}, max_attempts=1)
    sent: list[str] = []
    original = celery.send_task
    celery.send_task = lambda *a, **kw: sent.append(kw["task_id"]) or original(*a, **kw)
    send_job(celery, Keys("unused"), job)
    assert sent == [f"{job.id}.1"]
