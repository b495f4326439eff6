"""Every Redis client Longrun builds (gateway, hub, worker), with one set of socket, retry and health options.

After Redis restarts, every connection a pool kept is dead, and the first command on each one fails. So that
recovery is invisible to clients (issue 7, defect 8: the first hub `/readyz` after an outage said
`"redis": false`, the first WebSocket closed 1013), each client:

- retries a command once, at once, on a connection error or timeout: the pool drops the dead connection
  and the retry runs on a fresh one (`retry` with `retry_on_error`);
- PINGs a connection that has been idle for `HEALTH_CHECK_INTERVAL` before using it (a failed PING is retried
  the same way), which also finds connections a silent network failure left half-open;
- fails fast while Redis is really down (connect and read timeouts; one retry, no backoff), so a request
  answers 503 (or falls back to SQL) instead of hanging.

Callers that handle a lost connection themselves (the pub/sub listeners, which must notice the loss to repair
what they missed) ask for `retries=0` and no health check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry as SyncRetry

from . import sentinel

if TYPE_CHECKING:
    SyncRedis = redis.Redis[bytes]
    AsyncRedis = aioredis.Redis[bytes]
    AsyncPool = aioredis.ConnectionPool[Any]
else:  # the clients are not generic at runtime
    SyncRedis = redis.Redis
    AsyncRedis = aioredis.Redis
    AsyncPool = aioredis.ConnectionPool

CONNECT_TIMEOUT = 3.0  # seconds to connect (and handshake) before a command fails
READ_TIMEOUT = 10.0  # seconds to wait for an answer; no Longrun command blocks in Redis
HEALTH_CHECK_INTERVAL = 10.0  # a connection idle this long is PINGed before its next command
RETRY_ON = (ConnectionError, TimeoutError)


def connection_options(
    *, asynchronous: bool, retries: int = 1, backoff: AbstractBackoff | None = None, health_check: bool = True
) -> dict[str, Any]:
    """Keyword arguments for a redis-py client or pool: the options described above."""
    backoff = backoff or NoBackoff()
    retry = AsyncRetry(backoff, retries) if asynchronous else SyncRetry(backoff, retries)
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": READ_TIMEOUT,
        "socket_keepalive": True,
        "retry": retry,
        "retry_on_error": list(RETRY_ON),
        "health_check_interval": HEALTH_CHECK_INTERVAL if health_check else 0,
    }


def sync_redis(url: str, *, retries: int = 1, backoff: AbstractBackoff | None = None,
               single_connection: bool = False) -> SyncRedis:
    """A blocking client with its own pool (gateway handlers in threads, worker processes).

    `single_connection`: every command on one connection, under redis-py's lock, instead of a checkout from the
    pool (and its liveness check) per command, which cost a worker's pool process ~0.05 ms a command. For a
    process whose threads seldom overlap; its pipelines still take pool connections. Not through Sentinel, whose
    pool is what finds the new master after a failover."""
    options = connection_options(asynchronous=False, retries=retries, backoff=backoff)
    if (target := sentinel.parse(url)) is not None:  # redis+sentinel://…/master: see sentinel.py
        return sentinel.sync_client(target, options)
    client: SyncRedis = redis.Redis.from_url(url, single_connection_client=single_connection, **options)
    return client


def async_redis(url: str, *, retries: int = 1, health_check: bool = True) -> AsyncRedis:
    """An asyncio client with its own pool."""
    options = connection_options(asynchronous=True, retries=retries, health_check=health_check)
    if (target := sentinel.parse(url)) is not None:
        client: AsyncRedis = aioredis.Redis(connection_pool=sentinel.async_pool(target, options))
        return client
    client = aioredis.Redis.from_url(url, **options)
    return client


def async_pool(url: str, *, retries: int = 1, health_check: bool = True) -> AsyncPool:
    """An asyncio connection pool, for callers that make their own connections from it."""
    options = connection_options(asynchronous=True, retries=retries, health_check=health_check)
    if (target := sentinel.parse(url)) is not None:
        return sentinel.async_pool(target, options)
    pool: AsyncPool = aioredis.ConnectionPool.from_url(url, **options)
    return pool


def async_blocking_redis(url: str, *, max_connections: int, timeout: float) -> AsyncRedis:
    """An asyncio client whose pool holds at most `max_connections`; a caller waits up to `timeout` seconds
    for a free one instead of opening more (through Sentinel: at most `max_connections`, without the wait)."""
    if (target := sentinel.parse(url)) is not None:
        options = {**connection_options(asynchronous=True), "max_connections": max_connections}
        return aioredis.Redis(connection_pool=sentinel.async_pool(target, options))
    pool: AsyncPool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **connection_options(asynchronous=True)
    )
    client: AsyncRedis = aioredis.Redis(connection_pool=pool)
    return client
