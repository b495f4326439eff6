"""The shared pub/sub listener of long-polls: failed subscriptions and silent (half-open) connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from longrun_common.keys import Keys
from longrun_gateway.live import LiveEvents, LiveUnavailable

pytestmark = pytest.mark.integration


class FreezableProxy:
    """A TCP proxy to Redis whose open links can be frozen: they stay open, but nothing gets through any more
    (what a half-open connection looks like to the client). Links opened later pass traffic normally."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[asyncio.Event] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FreezableProxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        for flowing in self.links:
            flowing.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        flowing = asyncio.Event()
        flowing.set()
        self.links.append(flowing)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, flowing))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await flowing.wait()
                sink.write(data)
                await sink.drain()

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def listener(url: str, prefix: str, **options: float) -> AsyncIterator[LiveEvents]:
    live = LiveEvents(url, Keys(prefix), **options)
    await live.start()
    try:
        yield live
    finally:
        await live.aclose()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def publish(redis_url: str, prefix: str, job_id: str, seq: int) -> None:
    client: aioredis.Redis[bytes] = aioredis.Redis.from_url(redis_url)
    try:
        await client.publish(Keys(prefix).channel(job_id), json.dumps({"seq": seq, "status": "running"}))
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8


async def test_a_failed_subscribe_does_not_strand_the_next_watcher(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the second watcher of a channel whose first SUBSCRIBE failed was handed out as if
    subscribed, and then waited out its whole long-poll on a channel nobody had subscribed. Now a failed
    SUBSCRIBE write drops the connection (what was written is unknown); the subscriber reconnects and
    subscribes the channel again, and both watchers are handed out only once that is confirmed."""
    async with listener(redis_url, key_prefix, subscribe_timeout=5) as live:
        conn = live._subscriber._conn
        assert conn is not None
        real = conn.send_command
        release = asyncio.Event()
        calls: list[tuple[object, ...]] = []

        async def flaky(*args: object, **kwargs: object) -> None:
            if args[0] == "SUBSCRIBE":
                calls.append(args)
                if len(calls) == 1:
                    await release.wait()
                    raise redis.ConnectionError("SUBSCRIBE lost")
            await real(*args, **kwargs)

        monkeypatch.setattr(conn, "send_command", flaky)
        heard: dict[str, object] = {}
        inside = [asyncio.Event(), asyncio.Event()]

        async def watcher(n: int) -> None:
            async with live.watch("job") as watch:
                inside[n].set()
                assert not watch.broken  # the loss came before its confirmation: it missed nothing
                heard[f"news{n}"] = await watch.wait(5)
                heard[f"seq{n}"] = watch.seq

        first = asyncio.create_task(watcher(0))
        await until(lambda: bool(calls))  # the first SUBSCRIBE is in flight
        second = asyncio.create_task(watcher(1))
        await asyncio.sleep(0.05)  # the second watcher queues up behind it
        assert not inside[0].is_set() and not inside[1].is_set()
        release.set()
        await asyncio.wait_for(asyncio.gather(inside[0].wait(), inside[1].wait()), 5)
        assert live._subscriber.connects == 2  # confirmed on a fresh connection, not the failed one
        await publish(redis_url, key_prefix, "job", 7)
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert heard == {"news0": True, "seq0": 7, "news1": True, "seq1": 7}
        assert len(calls) == 1  # the failed connection was written to once, then replaced


async def test_an_unconfirmed_subscribe_fails_every_waiter_on_the_channel(redis_url: str, key_prefix: str) -> None:
    """Waiters sharing a SUBSCRIBE that Redis never confirms all give up together (then fall back to SQL)."""
    address = urlsplit(redis_url)
    proxy = await FreezableProxy(address.hostname or "127.0.0.1", address.port or 6379).start()
    try:
        async with listener(proxy.url, key_prefix, subscribe_timeout=1.0, health_interval=30) as live:
            async with live.watch("warm-up"):  # the listener's connection is up and subscribed
                pass
            proxy.freeze()  # the SUBSCRIBE below is written, but no confirmation will ever come back

            async def waiter() -> float:
                start = time.monotonic()
                with pytest.raises(LiveUnavailable):
                    async with live.watch("job"):
                        pass
                return time.monotonic() - start

            first = asyncio.create_task(waiter())
            await asyncio.sleep(0.6)
            second = asyncio.create_task(waiter())
            assert 0.9 < await first < 2.0
            assert await second < 0.8  # failed with the first, not a full timeout of its own later
            assert live.channels == 0
    finally:
        await proxy.aclose()


async def test_a_silent_connection_is_noticed_and_replaced(redis_url: str, key_prefix: str) -> None:
    """Found by review: nothing checked the listener's connection, so a half-open one turned every long-poll
    into a full wait. PINGs that go unanswered now count as a lost connection: waiters are told, and the
    listener connects again."""
    address = urlsplit(redis_url)
    proxy = await FreezableProxy(address.hostname or "127.0.0.1", address.port or 6379).start()
    try:
        async with listener(proxy.url, key_prefix, health_interval=0.2) as live:
            async with live.watch("job") as watch:
                await publish(redis_url, key_prefix, "job", 2)
                assert await watch.wait(5) and watch.seq == 2 and not watch.broken
                await asyncio.sleep(0.5)  # idle but healthy: PINGs are answered, nobody is woken
                assert live.healthy and not watch.broken
                proxy.freeze()
                start = time.monotonic()
                assert await watch.wait(10)
                assert watch.broken and time.monotonic() - start < 2.0
            await until(lambda: live.healthy)  # a fresh connection (the proxy lets new links through)
            async with live.watch("job") as watch:
                await publish(redis_url, key_prefix, "job", 3)
                assert await watch.wait(5) and watch.seq == 3 and not watch.broken
    finally:
        await proxy.aclose()


async def test_a_watcher_cancelled_while_subscribing_leaves_its_channel(redis_url: str, key_prefix: str) -> None:
    """A long-poll cancelled before Redis confirmed its SUBSCRIBE must not stay on the channel forever."""
    address = urlsplit(redis_url)
    proxy = await FreezableProxy(address.hostname or "127.0.0.1", address.port or 6379).start()
    try:
        async with listener(proxy.url, key_prefix, subscribe_timeout=30, health_interval=30) as live:
            async with live.watch("warm-up"):
                pass
            proxy.freeze()  # no confirmation will come

            async def poll() -> None:
                async with live.watch("job"):
                    pass

            task = asyncio.create_task(poll())
            await until(lambda: live.channels == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert live.channels == 0
    finally:
        await proxy.aclose()
