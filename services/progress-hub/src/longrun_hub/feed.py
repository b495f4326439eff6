"""The process's one Redis pub/sub connection, subscribed to exactly the jobs someone here watches.

- `add(job)` returns a future that resolves once Redis has confirmed SUBSCRIBE for the job's channel on the
  current connection (the seam waits for it before reading the snapshot); `discard(job)` lets it go.
- One writer task reconciles wanted vs. subscribed channels in batches (one SUBSCRIBE / UNSUBSCRIBE per batch)
  and PINGs the connection; one listener task reads messages and hands them to the hub synchronously.
- On any error the listener drops the connection, waits with capped, jittered exponential backoff, connects
  again, re-subscribes every wanted channel and calls `on_resubscribed` so the hub repairs from the streams.
  A connection that answers nothing for three health intervals counts as lost.

Confirmations arrive in the order SUBSCRIBEs were written, per channel; a FIFO of futures per channel matches
them even when a channel is unsubscribed and subscribed again before the first confirmation arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from longrun_common.keys import Keys
from longrun_common.redis_clients import async_pool

from .metrics import HubMetrics

log = logging.getLogger(__name__)

CHUNK = 500  # channels per SUBSCRIBE / UNSUBSCRIBE command


class RedisFeed:
    """Single pub/sub connection with reconnect, re-subscribe and health checks."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        metrics: HubMetrics,
        *,
        on_message: Callable[[str, bytes], None],
        on_resubscribed: Callable[[], None],
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        health_interval: float = 5.0,
    ) -> None:
        # Reconnects and health checks are this class's own: the connection must not retry behind its back.
        self._pool: aioredis.ConnectionPool[Any] = async_pool(url, retries=0, health_check=False)
        self.keys = keys
        self.metrics = metrics
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.health_interval = health_interval
        self._prefix_len = len(keys.channel(""))
        self._wanted: dict[str, asyncio.Future[None]] = {}
        self._retired: dict[str, asyncio.Future[None]] = {}  # discarded, UNSUBSCRIBE not yet written
        self._subscribed: set[str] = set()  # SUBSCRIBE written on the current connection
        self._pending: dict[str, deque[asyncio.Future[None]]] = {}
        self._dirty: set[str] = set()
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        self.connects = 0

    # --- what the hub calls ------------------------------------------------------------------------------

    def add(self, job_id: str) -> asyncio.Future[None]:
        """Want the job's channel; the future resolves when the subscription is confirmed."""
        future = self._wanted.get(job_id)
        if future is None:
            future = self._retired.pop(job_id, None)  # still subscribed: keep its confirmation
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._dirty.add(job_id)
                self._wake.set()
            self._wanted[job_id] = future
        return future

    def discard(self, job_id: str) -> None:
        """No one here watches the job any more: unsubscribe (batched, soon)."""
        future = self._wanted.pop(job_id, None)
        if future is not None:
            self._retired[job_id] = future
            self._dirty.add(job_id)
            self._wake.set()

    def ready(self, job_id: str) -> asyncio.Future[None] | None:
        """The current confirmation future of a wanted job."""
        return self._wanted.get(job_id)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="hub-feed-listener"),
                       asyncio.create_task(self._write(), name="hub-feed-writer")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._drop_connection()
        await self._pool.disconnect()

    # --- listener ---------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = self.backoff_min
        loop = asyncio.get_running_loop()
        while True:
            conn = self._pool.make_connection()
            try:
                await conn.connect()
                async with self._lock:
                    self._conn = conn
                    self._subscribed = set()
                    self._pending = {}
                    self._retired = {}
                    self._dirty = set()
                    for job_id, future in list(self._wanted.items()):
                        if future.done():  # confirmed on the old connection; wait for the new one
                            self._wanted[job_id] = loop.create_future()
                    await self._subscribe(conn, list(self._wanted))
                    self.connected = True
                self.connects += 1
                if self.connects > 1:
                    self.metrics.redis_reconnects.inc()
                    log.info("pub/sub reconnected; re-subscribed %d channels", len(self._wanted))
                self._on_resubscribed()
                self._wake.set()
                delay = self.backoff_min
                window = 3 * self.health_interval
                while True:
                    async with asyncio.timeout(window):
                        message = await conn.read_response(
                            timeout=math.inf, disconnect_on_error=False, push_request=True
                        )
                    self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the connection means: drop it and start again
                log.warning("pub/sub connection lost (%s: %s); reconnecting in ~%.2fs", type(exc).__name__, exc,
                            delay)
            finally:
                self.connected = False
                if self._conn is conn:
                    self._conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self.metrics.subscriptions.set(0)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return  # PONG outside subscribed mode
        kind = message[0]
        if kind == b"message":
            self._on_message(self._job_of(message[1]), message[2])
        elif kind == b"subscribe":
            job_id = self._job_of(message[1])
            queue = self._pending.get(job_id)
            if queue:
                future = queue.popleft()
                if not queue:
                    del self._pending[job_id]
                if not future.done():
                    future.set_result(None)

    def _job_of(self, channel: bytes) -> str:
        return channel[self._prefix_len:].decode()

    # --- writer -------------------------------------------------------------------------------------------------

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        last_ping = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.health_interval):
                    await self._wake.wait()
            self._wake.clear()
            conn = self._conn
            if conn is None or not self.connected:
                continue
            try:
                async with self._lock:
                    if conn is not self._conn:
                        continue
                    await self._reconcile(conn)
                    if loop.time() - last_ping >= self.health_interval:
                        last_ping = loop.time()
                        await conn.send_command("PING", check_health=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener notices the broken connection and reconnects
                log.debug("pub/sub write failed: %s", exc)

    async def _reconcile(self, conn: Any) -> None:
        dirty, self._dirty = self._dirty, set()
        unsubscribe = [j for j in dirty if j not in self._wanted and j in self._subscribed]
        subscribe = [j for j in dirty if j in self._wanted and j not in self._subscribed]
        for job_id in dirty:
            if job_id not in self._wanted:
                self._retired.pop(job_id, None)
        for chunk in _chunks(unsubscribe):
            self._subscribed.difference_update(chunk)
            await conn.send_command("UNSUBSCRIBE", *[self.keys.channel(j) for j in chunk], check_health=False)
        await self._subscribe(conn, subscribe)
        self.metrics.subscriptions.set(len(self._subscribed))

    async def _subscribe(self, conn: Any, jobs: list[str]) -> None:
        for chunk in _chunks(jobs):
            for job_id in chunk:  # register before writing: the confirmation may be read at once
                self._pending.setdefault(job_id, deque()).append(self._wanted[job_id])
                self._subscribed.add(job_id)
            await conn.send_command("SUBSCRIBE", *[self.keys.channel(j) for j in chunk], check_health=False)
        self.metrics.subscriptions.set(len(self._subscribed))

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


def _chunks(items: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch
