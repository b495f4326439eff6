"""One Redis pub/sub connection per process, subscribed to exactly the job channels someone here watches.

The one pub/sub core of Longrun: the progress hub fans its messages out to WebSocket/SSE clients, the gateway
wakes long-polls with it. Both rely on the same rules:

- `add(job)` returns a future that resolves once Redis has confirmed SUBSCRIBE of the job's channel on the
  current connection (a consumer reads its snapshot only after that, so nothing published in between is lost:
  the seam rule of docs/INTERNALS.md); `discard(job)` lets it go.
- One writer task reconciles wanted vs. subscribed channels in batches (one SUBSCRIBE / UNSUBSCRIBE per
  `CHUNK` channels) and PINGs the connection every `health_interval`; one listener task reads the replies and
  hands each message to `on_message(job_id, data)` synchronously (the hub's hot path: no queue in between).
- A connection that fails, whose write fails, or that answers nothing for three health intervals (half-open:
  the peer vanished without a FIN/RST) is dropped: `on_lost` is called at once, then the listener waits with
  capped, jittered exponential backoff, connects again, re-subscribes every wanted channel and calls
  `on_connected`. Subscriptions survive a reconnect; events published while disconnected do not, so a
  consumer must treat both calls as "repair from the stream": the hub re-reads its seams, the gateway's
  long-polls re-read the snapshot. Nothing is ever missed silently.
- Buffers are bounded: Redis bounds what it queues for a slow subscriber (`client-output-buffer-limit pubsub`,
  it closes the connection past it: a loss like any other), and nothing is queued on this side.

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

from .keys import Keys
from .redis_clients import async_pool

log = logging.getLogger(__name__)

CHUNK = 500  # channels per SUBSCRIBE / UNSUBSCRIBE command


def _nothing(*_: Any) -> None:
    pass


class Subscriber:
    """Single pub/sub connection with confirmed subscriptions, reconnect, re-subscribe and health checks."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], None] = _nothing,
        on_lost: Callable[[BaseException], None] = _nothing,
        on_subscriptions: Callable[[int], None] = _nothing,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        health_interval: float = 5.0,
        name: str = "pubsub",
    ) -> None:
        # Reconnects and health checks are this class's own: the connection must not retry behind its back.
        self._pool: aioredis.ConnectionPool[Any] = async_pool(url, retries=0, health_check=False)
        self.keys = keys
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._on_subscriptions = on_subscriptions  # a gauge: channels subscribed on the current connection
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.health_interval = health_interval
        self.name = name
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
        self.connects = 0  # successful connections so far (a consumer compares it to notice a reconnect)
        self.attempted = asyncio.Event()  # set once the first connection succeeded or failed

    # --- what consumers call -----------------------------------------------------------------------------

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
        """The current confirmation future of a wanted job (a new one after each reconnect)."""
        return self._wanted.get(job_id)

    @property
    def settled(self) -> bool:
        """True when every wanted channel is subscribed and confirmed (none waits to be written or answered)."""
        return not self._dirty and not any(self._pending.values())

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name=f"{self.name}-listener"),
                       asyncio.create_task(self._write(), name=f"{self.name}-writer")]

    async def stop(self) -> None:
        for task in self._tasks:
            # Again until it ends: on Python 3.11 `asyncio.wait_for` (redis-py's socket writes) swallows a
            # cancellation that arrives just as the write completes.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
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
            lost: BaseException | None = None
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
                    log.info("%s reconnected; re-subscribed %d channels", self.name, len(self._wanted))
                self._on_connected()
                self.attempted.set()
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
                lost = exc
                log.warning("%s connection lost (%s: %s); reconnecting in ~%.2fs", self.name, type(exc).__name__,
                            exc, delay)
            finally:
                was_connected, self.connected = self.connected, False
                if self._conn is conn:
                    self._conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self._on_subscriptions(0)
            self.attempted.set()
            if was_connected and lost is not None:
                self._on_lost(lost)
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
            except Exception as exc:
                # What was written is unknown now (a SUBSCRIBE may never be confirmed): drop the connection,
                # so the listener reconnects and subscribes every wanted channel afresh.
                log.warning("%s write failed (%s: %s); reconnecting", self.name, type(exc).__name__, exc)
                if self._conn is conn:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)

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
        self._on_subscriptions(len(self._subscribed))

    async def _subscribe(self, conn: Any, jobs: list[str]) -> None:
        for chunk in _chunks(jobs):
            for job_id in chunk:  # register before writing: the confirmation may be read at once
                self._pending.setdefault(job_id, deque()).append(self._wanted[job_id])
                self._subscribed.add(job_id)
            await conn.send_command("SUBSCRIBE", *[self.keys.channel(j) for j in chunk], check_health=False)
        self._on_subscriptions(len(self._subscribed))

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
