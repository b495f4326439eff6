"""One shared Redis pub/sub connection per gateway process, for long-polls that wait on a job's channel.

Channels are reference-counted: the first watcher of a job subscribes, the last one unsubscribes. A watcher
is handed out only after Redis confirmed its SUBSCRIBE, so a snapshot read afterwards cannot miss an event
published in between (the seam rule of docs/INTERNALS.md). Confirmations come back in command order, so a
FIFO of futures per channel matches each SUBSCRIBE with its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

from longrun_common.keys import Keys
from longrun_common.states import TERMINAL

log = logging.getLogger(__name__)

_TERMINAL = {status.value for status in TERMINAL}
MAX_BACKOFF = 2.0  # seconds between reconnect attempts, at most


class LiveUnavailable(Exception):
    """The shared subscription could not be established (Redis down or slow)."""


class Watch:
    """What one waiter has heard on its job's channel since it started watching."""

    def __init__(self) -> None:
        self.seq = 0
        self.terminal = False
        self.broken = False  # the connection dropped: events may have been missed
        self._event = asyncio.Event()

    def _notify(self, seq: int, status: str | None) -> None:
        self.seq = max(self.seq, seq)
        self.terminal = self.terminal or status in _TERMINAL
        self._event.set()

    def _break(self) -> None:
        self.broken = True
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for news; False when none came."""
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class LiveEvents:
    """The process-wide subscription: `async with live.watch(job_id) as w` then `await w.wait(t)`."""

    def __init__(self, client: aioredis.Redis[bytes], keys: Keys, *, subscribe_timeout: float = 5.0) -> None:
        self._client = client
        self._keys = keys
        self._pubsub = client.pubsub()
        self._watches: dict[str, set[Watch]] = {}
        self._pending: dict[str, deque[asyncio.Future[None]]] = {}
        self._lock = asyncio.Lock()  # orders SUBSCRIBE/UNSUBSCRIBE sends with the bookkeeping above
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribe_timeout = subscribe_timeout
        self._healthy = True  # False between a lost connection and the reconnect

    @property
    def channels(self) -> int:
        """How many job channels are subscribed (for tests and metrics)."""
        return len(self._watches)

    @property
    def healthy(self) -> bool:
        """False while the listener is reconnecting (watchers are refused; callers fall back to SQL)."""
        return self._healthy

    @property
    def settled(self) -> bool:
        """True when no SUBSCRIBE is waiting for Redis to confirm it."""
        return not any(self._pending.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="longrun-gateway-live")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._break_all()
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8
        await self._client.aclose()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """Subscribe to the job's channel (confirmed by Redis) for the duration of the block."""
        channel = self._keys.channel(job_id)
        watch = Watch()
        if not self._healthy:
            raise LiveUnavailable("reconnecting to redis")
        try:
            confirmation = await self._add(channel, watch)
            if confirmation is not None:
                await asyncio.wait_for(asyncio.shield(confirmation), self._subscribe_timeout)
        except (redis.RedisError, OSError, TimeoutError, LiveUnavailable) as exc:
            await self._remove(channel, watch)
            raise LiveUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield watch
        finally:
            await self._remove(channel, watch)

    async def _add(self, channel: str, watch: Watch) -> asyncio.Future[None] | None:
        async with self._lock:
            watchers = self._watches.setdefault(channel, set())
            watchers.add(watch)
            pending = self._pending.setdefault(channel, deque())
            if len(watchers) > 1:
                # Someone already subscribed; wait for their confirmation if it is still in flight.
                return pending[-1] if pending else None
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pending.append(future)
            try:
                await self._pubsub.subscribe(channel)
            except BaseException as exc:
                pending.remove(future)
                future.set_exception(LiveUnavailable(str(exc)))
                future.exception()  # retrieved: other waiters get it through their own await
                raise
            self._connected.set()
            return future

    async def _remove(self, channel: str, watch: Watch) -> None:
        async with self._lock:
            watchers = self._watches.get(channel)
            if watchers is None:
                return
            watchers.discard(watch)
            if watchers:
                return
            del self._watches[channel]
            if not self._pending.get(channel):
                self._pending.pop(channel, None)
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._pubsub.connection is None:
                    await self._connected.wait()
                    continue
                message = await self._pubsub.get_message(timeout=None)  # type: ignore[arg-type]  # None: block
                backoff, self._healthy = 0.1, True
                if message is not None:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if self._healthy:
                    log.warning("live subscription lost: %s; reconnecting", exc)
                    self._healthy = False
                self._break_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._pubsub.connect()  # type: ignore[attr-defined]  # re-subscribes known channels
                    await self._drop_stale()
                    self._healthy = True
                    log.info("live subscription restored")
            except Exception:  # never let the listener die on a surprise; log and keep serving
                log.exception("live subscription listener error")
                await asyncio.sleep(backoff)

    async def _drop_stale(self) -> None:
        """Channels whose UNSUBSCRIBE was lost in an outage were re-subscribed on reconnect: drop them."""
        async with self._lock:
            stale = [name for name in self._pubsub.channels if _text(name) not in self._watches]
            if stale:
                await self._pubsub.unsubscribe(*stale)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "subscribe":
            # Replies come in command order: this one answers the oldest SUBSCRIBE still waiting.
            pending = self._pending.get(channel)
            if pending:
                future = pending.popleft()
                if not future.done():
                    future.set_result(None)
            if pending is not None and not pending and channel not in self._watches:
                self._pending.pop(channel, None)
        elif kind == "message":
            try:
                event = json.loads(message["data"])
                seq, status = int(event["seq"]), event.get("status")
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed event on %s", channel)
                return
            for watch in self._watches.get(channel, ()):
                watch._notify(seq, status)

    def _break_all(self) -> None:
        """After a disconnect nobody can trust that they heard everything: wake every watcher."""
        for pending in self._pending.values():
            while pending:
                future = pending.popleft()
                if not future.done():
                    future.set_exception(LiveUnavailable("redis connection lost"))
                    future.exception()
        for watchers in self._watches.values():
            for watch in watchers:
                watch._break()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
