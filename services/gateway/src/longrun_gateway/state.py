"""The gateway's long-lived clients, built once per process by the lifespan."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TypedDict

from celery import Celery
from sqlalchemy import Engine

from longrun_common import telemetry
from longrun_common.celery_app import create_celery
from longrun_common.db import create_db_engine
from longrun_common.jobs import JobStore
from longrun_common.keys import Keys
from longrun_common.maintenance import Maintenance
from longrun_common.publisher import Publisher
from longrun_common.reader import Reader
from longrun_common.redis_clients import AsyncRedis, SyncRedis, async_redis, sync_redis
from longrun_common.settings import Settings

from .auth import Authenticator
from .lane import MAX_GROUP, GroupLane
from .live import LiveEvents
from .metrics import Metrics
from .ratelimit import SubmitLimiter
from .submission import SubmitCall, Submitted, TaskCatalog, submit_group


@dataclass
class Gateway:
    """Everything a request handler may need; reached through the aliases in deps.py."""

    settings: Settings
    engine: Engine
    redis: SyncRedis
    aredis: AsyncRedis
    abroker: AsyncRedis | None  # the Celery broker when it is a Redis of its own (LONGRUN_BROKER_URL), for /readyz
    celery: Celery
    keys: Keys
    publisher: Publisher
    reader: Reader
    store: JobStore
    catalog: TaskCatalog
    submits: GroupLane[SubmitCall, Submitted]  # POST /v1/jobs, committed in groups
    live: LiveEvents
    limiter: SubmitLimiter
    metrics: Metrics
    auth: Authenticator
    _maintenance: threading.Event | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> Gateway:
        """Construct the clients (no network I/O yet: each connects on first use)."""
        keys = Keys(settings.key_prefix)
        engine = create_db_engine(settings)
        # Fail fast while Redis is down (a request answers 503 or falls back to SQL), and replace a pooled
        # connection that a Redis restart closed without the request noticing (see redis_clients.py).
        sync_client = sync_redis(settings.redis_url)
        async_client = async_redis(settings.redis_url)
        celery = create_celery(settings, name="longrun-gateway")
        publisher = Publisher(keys, stream_maxlen=settings.stream_maxlen, event_ttl_seconds=settings.event_ttl_seconds)
        store = JobStore(engine=engine, redis=sync_client, keys=keys, publisher=publisher, celery=celery)
        metrics.watch_dead_letters(engine)
        metrics.watch_jobs(engine, sync_client)
        gateway = cls(
            settings=settings,
            engine=engine,
            redis=sync_client,
            aredis=async_client,
            abroker=async_redis(settings.broker_url) if settings.celery_broker_url != settings.redis_url else None,
            celery=celery,
            keys=keys,
            publisher=publisher,
            reader=Reader(keys),
            store=store,
            catalog=TaskCatalog(engine),
            # With tracing on, every submit is a group of its own: its trace then holds its own commit, `queued`
            # event and message spans (a group's would sit in one request's trace only).
            submits=GroupLane(lambda calls: submit_group(gateway, calls), max_group=1 if telemetry.enabled() else
                              MAX_GROUP),
            live=LiveEvents(settings.redis_url, keys),  # its own connection (longrun_common.pubsub)
            limiter=SubmitLimiter(async_client, keys, settings.tenant_rate_limit, settings.tenant_rates()),
            metrics=metrics,
            auth=Authenticator(settings, engine),
        )
        return gateway

    async def start(self) -> None:
        await self.live.start()
        if self.settings.maintenance:
            # The reaper and reconciler also run here, so they keep working with every worker scaled to zero.
            self._maintenance = Maintenance(self.store, self.settings, on_lost=self.metrics.on_lost).start()

    async def aclose(self) -> None:
        if self._maintenance is not None:
            self._maintenance.set()
        self.submits.close()
        self.metrics.unwatch_dead_letters()
        self.metrics.unwatch_jobs()
        await self.live.aclose()
        for client in (self.aredis, self.abroker):
            if client is not None:
                await client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8
        self.redis.close()
        self.celery.close()
        self.engine.dispose()


class State(TypedDict):
    """The lifespan state; Starlette copies it into `request.state` for every request."""

    gateway: Gateway
