"""The gateway's long-lived clients, built once per process by the lifespan."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import redis
import redis.asyncio as aioredis
from celery import Celery
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry
from sqlalchemy import Engine

from longrun_common.celery_app import create_celery
from longrun_common.db import create_db_engine
from longrun_common.jobs import JobStore
from longrun_common.keys import Keys
from longrun_common.maintenance import Maintenance
from longrun_common.publisher import Publisher
from longrun_common.reader import Reader
from longrun_common.settings import Settings

from .live import LiveEvents
from .metrics import Metrics
from .ratelimit import SubmitLimiter
from .submission import TaskCatalog

if TYPE_CHECKING:
    SyncRedis = redis.Redis[bytes]
    AsyncRedis = aioredis.Redis[bytes]
else:  # the clients are not generic at runtime
    SyncRedis = redis.Redis
    AsyncRedis = aioredis.Redis

# Fail fast when Redis is unreachable: a request should answer 503 (or fall back to SQL), not hang.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
SOCKET_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": READ_TIMEOUT,
    "socket_keepalive": True,
}


@dataclass
class Gateway:
    """Everything a request handler may need; reached through the aliases in deps.py."""

    settings: Settings
    engine: Engine
    redis: SyncRedis
    aredis: AsyncRedis
    celery: Celery
    keys: Keys
    publisher: Publisher
    reader: Reader
    store: JobStore
    catalog: TaskCatalog
    live: LiveEvents
    limiter: SubmitLimiter
    metrics: Metrics
    _maintenance: threading.Event | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> Gateway:
        """Construct the clients (no network I/O yet: each connects on first use)."""
        keys = Keys(settings.key_prefix)
        engine = create_db_engine(settings)
        # One immediate retry: enough to replace a pooled connection that a Redis restart closed, without
        # redis-py's default of many backed-off retries holding a request for seconds while Redis is down.
        sync_redis: SyncRedis = redis.Redis.from_url(
            settings.redis_url,
            **SOCKET_OPTIONS,
            retry=SyncRetry(NoBackoff(), 1),
        )
        async_redis: AsyncRedis = aioredis.Redis.from_url(
            settings.redis_url,
            **SOCKET_OPTIONS,
            retry=AsyncRetry(NoBackoff(), 1),
        )
        # The listener's connection must surface a disconnect to us (no silent internal retries), so that
        # waiters are told they may have missed an event. Its reads pass their own timeouts (the health
        # check's); the socket timeout bounds only writes and the handshake of a (re)connect.
        listen_redis: AsyncRedis = aioredis.Redis.from_url(
            settings.redis_url,
            **SOCKET_OPTIONS,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        celery = create_celery(settings, name="longrun-gateway")
        # No `task-sent` event per submission: a second Redis publish that doubled the cost of a send. Flower
        # still follows every task through the worker's received/started/succeeded events.
        celery.conf.task_send_sent_event = False
        publisher = Publisher(keys, stream_maxlen=settings.stream_maxlen, event_ttl_seconds=settings.event_ttl_seconds)
        store = JobStore(engine=engine, redis=sync_redis, keys=keys, publisher=publisher, celery=celery)
        metrics.watch_dead_letters(engine)
        metrics.watch_jobs(engine, sync_redis)
        return cls(
            settings=settings,
            engine=engine,
            redis=sync_redis,
            aredis=async_redis,
            celery=celery,
            keys=keys,
            publisher=publisher,
            reader=Reader(keys),
            store=store,
            catalog=TaskCatalog(engine),
            live=LiveEvents(listen_redis, keys),
            limiter=SubmitLimiter(async_redis, keys, settings.tenant_rate_limit),
            metrics=metrics,
        )

    async def start(self) -> None:
        await self.live.start()
        if self.settings.maintenance:
            # The reaper and reconciler also run here, so they keep working with every worker scaled to zero.
            self._maintenance = Maintenance(self.store, self.settings, on_lost=self.metrics.on_lost).start()

    async def aclose(self) -> None:
        if self._maintenance is not None:
            self._maintenance.set()
        self.metrics.unwatch_dead_letters()
        self.metrics.unwatch_jobs()
        await self.live.aclose()
        await self.aredis.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8
        self.redis.close()
        self.celery.close()
        self.engine.dispose()


class State(TypedDict):
    """The lifespan state; Starlette copies it into `request.state` for every request."""

    gateway: Gateway
