"""Per-process resources (DB engine, Redis, JobStore), created after the fork and rebuilt if the pid changes."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis
from celery import Celery
from redis.backoff import ExponentialWithJitterBackoff  # type: ignore[attr-defined]  # types-redis lags redis 8
from sqlalchemy import Engine

from longrun_common.db import create_db_engine
from longrun_common.jobs import JobStore
from longrun_common.keys import Keys
from longrun_common.publisher import Publisher
from longrun_common.redis_clients import sync_redis
from longrun_common.settings import Settings

from .taskevents import TaskEvents


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    redis: redis.Redis[bytes]
    keys: Keys
    publisher: Publisher
    store: JobStore
    events: TaskEvents


_lock = threading.Lock()
_current: tuple[int, Resources] | None = None
# Whether this process is one of the pool's (reset_resources says so after the fork). Its Redis client keeps one
# connection: only the task's thread and its reporter use it. The main process's client serves the consumer,
# maintenance and timeout threads at once, so it keeps its pool.
_pool_process = False


def get_resources(settings: Settings, celery: Celery) -> Resources:
    """This process's resources; a forked child never reuses its parent's connections."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            keys = Keys(settings.key_prefix)
            engine = create_db_engine(settings)
            # A worker rides out a short Redis blip (redis-py's own default: 10 retries, backed off from
            # 10 ms to 1 s) rather than fail a report; the options are every service's (redis_clients.py).
            client = sync_redis(settings.redis_url, retries=10, backoff=ExponentialWithJitterBackoff(base=0.01, cap=1),
                                single_connection=_pool_process)
            publisher = Publisher(keys, stream_maxlen=settings.stream_maxlen,
                                  event_ttl_seconds=settings.event_ttl_seconds)
            store = JobStore(engine, client, keys, publisher, celery)
            events = TaskEvents(celery if isinstance(celery, Celery) else None)
            _current = (os.getpid(), Resources(settings, engine, client, keys, publisher, store, events))
        return _current[1]


def reset_resources(*, pool_process: bool | None = None) -> None:
    """Forget this process's resources (after fork, or between tests); `pool_process` says, after the fork, whether
    this is one of the pool's processes."""
    global _current, _pool_process
    with _lock:
        if pool_process is not None:
            _pool_process = pool_process
        if _current is not None and _current[0] == os.getpid():
            _current[1].engine.dispose()
            _current[1].redis.close()
            _current[1].events.close()
        _current = None
