"""The one pub/sub core (longrun_common.pubsub) against a private redis-server: confirmed subscriptions, one
subscription per channel however many want it, re-subscription after Redis drops the connection (CLIENT KILL,
a slow subscriber past its output-buffer limit, a restart), with the consumer told each time, and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from longrun_common.keys import Keys
from longrun_common.pubsub import Subscriber
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A Redis of this module's own: its tests kill clients, change limits and restart it."""
    redis_server = RedisServer().start()
    yield redis_server
    redis_server.stop()


@dataclass
class Consumer:
    """What a consumer of the subscriber hears: messages, and every loss and (re)connection."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    connected: int = 0

    def on_message(self, job_id: str, data: bytes) -> None:
        self.messages.append((job_id, data))

    def on_lost(self, exc: BaseException) -> None:
        self.lost.append(type(exc).__name__)

    def on_connected(self) -> None:
        self.connected += 1


@contextlib.asynccontextmanager
async def subscriber(url: str, consumer: Consumer, **options: Any) -> AsyncIterator[Subscriber]:
    sub = Subscriber(url, Keys("t"), on_message=consumer.on_message, on_lost=consumer.on_lost,
                     on_connected=consumer.on_connected, **options)
    await sub.start()
    try:
        yield sub
    finally:
        await sub.stop()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[aioredis.Redis[bytes]]:
    redis_client: aioredis.Redis[bytes] = aioredis.Redis.from_url(url)
    try:
        yield redis_client
    finally:
        await redis_client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def subscribers_of(redis_client: aioredis.Redis[bytes], job_id: str) -> int:
    counts = await redis_client.pubsub_numsub(Keys("t").channel(job_id))
    return int(counts[0][1])


async def test_a_confirmed_subscription_hears_every_message_once_however_many_want_it(server: RedisServer) -> None:
    consumer = Consumer()
    async with subscriber(server.url, consumer) as sub, client(server.url) as redis_client:
        first = sub.add("a")
        assert sub.add("a") is first  # a second watcher of the job shares the subscription
        await asyncio.wait_for(first, 5)
        assert await subscribers_of(redis_client, "a") == 1  # confirmed means: Redis has it
        await asyncio.wait_for(asyncio.gather(sub.add("b"), sub.add("c")), 5)
        for job_id in ("a", "b", "c", "a"):
            await redis_client.publish(Keys("t").channel(job_id), job_id.encode())
        await until(lambda: len(consumer.messages) == 4)
        assert consumer.messages == [("a", b"a"), ("b", b"b"), ("c", b"c"), ("a", b"a")]
        sub.discard("b")
        await until(lambda: sub.settled)
        await until(lambda: sub.ready("b") is None)
        assert await subscribers_of(redis_client, "b") == 0
        assert consumer.lost == [] and consumer.connected == 1


async def test_a_killed_connection_is_replaced_and_every_wanted_channel_subscribed_again(server: RedisServer) -> None:
    consumer = Consumer()
    async with subscriber(server.url, consumer, backoff_min=0.01) as sub, client(server.url) as redis_client:
        confirmed = [sub.add(job_id) for job_id in ("a", "b", "c")]
        await asyncio.wait_for(asyncio.gather(*confirmed), 5)
        sub.discard("c")
        await until(lambda: sub.settled)
        assert await redis_client.client_kill_filter(_type="pubsub") == 1
        # The consumer is told at once (it must repair: anything published now is lost) and again once the
        # channels it still wants are subscribed on the new connection.
        await until(lambda: consumer.connected == 2)
        assert consumer.lost == ["ConnectionError"] and sub.connects == 2
        for job_id in ("a", "b"):
            again = sub.ready(job_id)
            assert again is not None and again not in confirmed  # a new confirmation, for the new connection
            await asyncio.wait_for(again, 5)
            assert await subscribers_of(redis_client, job_id) == 1
        assert sub.ready("c") is None and await subscribers_of(redis_client, "c") == 0
        await redis_client.publish(Keys("t").channel("b"), b"after")
        await until(lambda: consumer.messages == [("b", b"after")])


async def test_a_subscriber_past_its_output_buffer_limit_is_dropped_and_recovers(server: RedisServer) -> None:
    """Buffers are bounded on Redis's side: a subscriber too slow for what is published is disconnected (not
    left to grow Redis's memory), and that is a loss like any other: told, reconnected, re-subscribed."""
    consumer = Consumer()
    async with subscriber(server.url, consumer, backoff_min=0.01) as sub, client(server.url) as redis_client:
        await asyncio.wait_for(sub.add("a"), 5)
        limit = await redis_client.config_get("client-output-buffer-limit")
        await redis_client.config_set("client-output-buffer-limit", "pubsub 16kb 0 0")
        try:
            await redis_client.publish(Keys("t").channel("a"), b"x" * 200_000)  # more than it may queue
            await until(lambda: consumer.connected == 2)
        finally:
            await redis_client.config_set("client-output-buffer-limit", limit["client-output-buffer-limit"])
        assert consumer.lost and consumer.messages == []
        ready = sub.ready("a")
        assert ready is not None
        await asyncio.wait_for(ready, 5)
        await redis_client.publish(Keys("t").channel("a"), b"small")
        await until(lambda: consumer.messages == [("a", b"small")])


async def test_reconnects_back_off_while_redis_is_down(server: RedisServer) -> None:
    consumer = Consumer()
    async with subscriber(server.url, consumer, backoff_min=0.02, backoff_max=0.4) as sub:
        await asyncio.wait_for(sub.add("a"), 5)
        attempts: list[float] = []
        make = sub._pool.make_connection

        def counted() -> Any:
            attempts.append(time.monotonic())
            return make()

        sub._pool.make_connection = counted  # type: ignore[method-assign]
        server.stop()
        try:
            await until(lambda: bool(consumer.lost))
            await asyncio.sleep(2.0)
        finally:
            server.start()  # the same port
        # Doubling from 20 ms to 400 ms: about 8 attempts in 2 s, where retrying at once would make hundreds.
        assert 3 <= len(attempts) <= 15
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert max(gaps) > 4 * min(gaps)  # the wait grew
        await until(lambda: sub.connected, seconds=10)
        ready = sub.ready("a")
        assert ready is not None
        await asyncio.wait_for(ready, 5)
