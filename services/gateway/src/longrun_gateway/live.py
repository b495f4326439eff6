"""One shared Redis pub/sub connection per gateway process, for long-polls that wait on a job's channel.

Channels are reference-counted: the first watcher of a job subscribes, the last one unsubscribes. A watcher
is handed out only after Redis confirmed a SUBSCRIBE of its channel on the current connection, so a snapshot
read afterwards cannot miss an event published in between (the seam rule of docs/INTERNALS.md).

Each channel tracks its own subscription state: the confirmation future of the SUBSCRIBE its watchers rely on.
Every watcher of the channel waits on that one future, so a SUBSCRIBE that fails (an error, or no confirmation
within the timeout) fails all of them together, and the next watcher sends a fresh SUBSCRIBE instead of
trusting one that never happened. Confirmations come back in command order, so a FIFO of futures per channel
matches each SUBSCRIBE with its reply.

The listener PINGs the connection whenever it has been quiet for `health_interval` seconds; a connection that
answers nothing for two intervals (half-open: the peer vanished without a FIN/RST) counts as lost, like one
that fails outright. A lost connection wakes every watcher (`broken`: events may have been missed), and the
listener connects afresh with capped backoff; every connection starts with no subscriptions.
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
from redis.asyncio.client import PubSub

from longrun_common.keys import Keys
from longrun_common.states import TERMINAL

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.1  # seconds before the first reconnect attempt
MAX_BACKOFF = 2.0  # seconds between reconnect attempts, at most
HEALTH_INTERVAL = 3.0  # PING a connection that has been quiet this long; lost after two quiet intervals
CONNECT_TIMEOUT = 5.0  # connecting includes the handshake, which has no read timeout of its own

_DOWN = (redis.RedisError, OSError, TimeoutError)


class LiveUnavailable(Exception):
    """The shared subscription could not be established (Redis down or slow)."""


class Watch:
    """What one waiter has heard on its job's channel since it started watching."""

    def __init__(self) -> None:
        self.seq = 0
        self.terminal = False
        self.broken = False  # the connection dropped: events may have been missed
        self._event = asyncio.Event()

    def _notify(self, seq: int, terminal: bool) -> None:
        self.seq = max(self.seq, seq)
        self.terminal = self.terminal or terminal
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


class _Channel:
    """One job channel: its watchers and the state of its subscription on the current connection."""

    __slots__ = ("ready", "subscribed", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        # The confirmation of the SUBSCRIBE the watchers rely on: pending while in flight, a result once
        # confirmed, an exception when it failed. None: no SUBSCRIBE on this connection to rely on.
        self.ready: asyncio.Future[None] | None = None
        self.subscribed = False  # a SUBSCRIBE was written on the current connection (so UNSUBSCRIBE when done)


class LiveEvents:
    """The process-wide subscription: `async with live.watch(job_id) as w` then `await w.wait(t)`."""

    def __init__(
        self,
        client: aioredis.Redis[bytes],
        keys: Keys,
        *,
        subscribe_timeout: float = 5.0,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._client = client
        self._keys = keys
        self._pubsub: PubSub | None = None  # the current connection; None while reconnecting
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[str, deque[asyncio.Future[None]]] = {}
        self._lock = asyncio.Lock()  # orders SUBSCRIBE/UNSUBSCRIBE/PING sends with the bookkeeping above
        self._task: asyncio.Task[None] | None = None
        self._subscribe_timeout = subscribe_timeout
        self._health_interval = health_interval
        self._healthy = False  # True while connected; watchers are refused otherwise (callers fall back to SQL)
        self._lost = False  # a loss was logged and its recovery is not yet

    @property
    def channels(self) -> int:
        """How many job channels have watchers (for tests and metrics)."""
        return len(self._channels)

    @property
    def healthy(self) -> bool:
        """False while the listener is (re)connecting (watchers are refused; callers fall back to SQL)."""
        return self._healthy

    @property
    def settled(self) -> bool:
        """True when no SUBSCRIBE is waiting for Redis to confirm it."""
        return not any(self._pending.values())

    async def start(self) -> None:
        """Connect now, so the first long-poll is live; if Redis is down, the listener keeps trying."""
        try:
            await self._connect()
        except _DOWN as exc:
            self._lose(exc)
        self._task = asyncio.create_task(self._run(), name="longrun-gateway-live")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._healthy = False
        self._break_all()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close(pubsub)
        await self._client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """Subscribe to the job's channel (confirmed by Redis) for the duration of the block."""
        channel = self._keys.channel(job_id)
        watch = Watch()
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                ready = await self._add(channel, watch)
                await asyncio.shield(ready)
        except BaseException as exc:  # cancellation too: the watcher must not linger on its channel
            if isinstance(exc, TimeoutError):
                # Not confirmed in time: everyone waiting on this SUBSCRIBE gives up now, not one by one.
                self._fail_channel(channel, LiveUnavailable("redis did not confirm the subscription in time"))
            await self._remove(channel, watch)
            if isinstance(exc, (*_DOWN, LiveUnavailable)):
                raise LiveUnavailable(str(exc) or type(exc).__name__) from exc
            raise
        try:
            yield watch
        finally:
            await self._remove(channel, watch)

    # --- subscriptions ----------------------------------------------------------------------------------

    async def _add(self, channel: str, watch: Watch) -> asyncio.Future[None]:
        """Join the channel; the future resolves once a SUBSCRIBE of it is confirmed on this connection."""
        async with self._lock:
            pubsub = self._pubsub
            if not self._healthy or pubsub is None:
                raise LiveUnavailable("reconnecting to redis")
            state = self._channels.get(channel)
            if state is None:
                state = self._channels[channel] = _Channel()
            state.watches.add(watch)
            if state.ready is not None and not _failed(state.ready):
                return state.ready  # confirmed, or in flight: share it
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.ready = future
            pending = self._pending.setdefault(channel, deque())
            pending.append(future)  # before the send: the confirmation may be read at once
            try:
                await pubsub.subscribe(channel)
            except BaseException as exc:
                with contextlib.suppress(ValueError):
                    pending.remove(future)
                _fail(future, LiveUnavailable(f"subscribe failed: {exc}"))
                raise
            if not _failed(future):  # not failed meanwhile by a lost connection
                state.subscribed = True
            return future

    async def _remove(self, channel: str, watch: Watch) -> None:
        async with self._lock:
            state = self._channels.get(channel)
            if state is None:
                return
            state.watches.discard(watch)
            if state.watches:
                return
            del self._channels[channel]
            if not self._pending.get(channel):
                self._pending.pop(channel, None)
            if state.subscribed and self._pubsub is not None:
                with contextlib.suppress(*_DOWN):
                    await self._pubsub.unsubscribe(channel)

    def _fail_channel(self, channel: str, exc: Exception) -> None:
        state = self._channels.get(channel)
        if state is not None and state.ready is not None:
            _fail(state.ready, exc)

    # --- the listener -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    backoff = MIN_BACKOFF
                assert self._pubsub is not None
                await self._listen(self._pubsub)
            except asyncio.CancelledError:
                raise
            except _DOWN as exc:
                self._lose(exc)
            except Exception as exc:  # never let the listener die on a surprise; log, reconnect, keep serving
                log.exception("live subscription listener error")
                self._lose(exc)
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                await _close(pubsub)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _connect(self) -> None:
        """A fresh connection with no subscriptions (watchers subscribe again as they come)."""
        pubsub = self._client.pubsub()
        try:
            await asyncio.wait_for(pubsub.connect(), CONNECT_TIMEOUT)  # type: ignore[attr-defined]  # types-redis lags
        except BaseException:
            await _close(pubsub)
            raise
        async with self._lock:
            self._pubsub = pubsub
            self._healthy = True
        if self._lost:
            self._lost = False
            log.info("live subscription restored")

    async def _listen(self, pubsub: PubSub) -> None:
        """Dispatch messages until the connection fails or stays silent for two health intervals."""
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            message = await pubsub.get_message(timeout=self._health_interval)
            now = loop.time()
            if message is not None:
                heard = now
                self._dispatch(message)
            quiet = now - heard
            if quiet >= 2 * self._health_interval:
                raise redis.ConnectionError(f"no answer from redis for {quiet:.1f}s (PING unanswered)")
            if quiet >= self._health_interval and now - pinged >= self._health_interval:
                pinged = now
                async with self._lock:
                    await pubsub.ping()  # answered by a `pong` message, which counts as heard

    def _lose(self, exc: BaseException) -> None:
        """The connection is gone: refuse new watchers and tell the current ones."""
        if not self._lost:
            self._lost = True
            log.warning("live subscription unavailable: %s; reconnecting", str(exc) or type(exc).__name__)
        self._healthy = False
        self._break_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "pong":
            return
        raw = message.get("channel")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind == "subscribe":
            # Replies come in command order: this one answers the oldest SUBSCRIBE still waiting.
            pending = self._pending.get(channel)
            if pending:
                future = pending.popleft()
                if not future.done():
                    future.set_result(None)
            if pending is not None and not pending and channel not in self._channels:
                self._pending.pop(channel, None)
        elif kind == "message":
            try:
                event = json.loads(message["data"])
                seq, status = int(event["seq"]), event.get("status")
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed event on %s", channel)
                return
            terminal = isinstance(status, str) and status in TERMINAL
            state = self._channels.get(channel)
            for watch in state.watches if state is not None else ():
                watch._notify(seq, terminal)

    def _break_all(self) -> None:
        """After a disconnect nobody can trust that they heard everything: fail and wake every watcher.
        The next connection starts with no subscriptions, so no channel's earlier SUBSCRIBE counts any more."""
        lost = LiveUnavailable("redis connection lost")
        for pending in self._pending.values():
            for future in pending:
                _fail(future, lost)
        self._pending.clear()
        for state in self._channels.values():
            if state.ready is not None:
                _fail(state.ready, lost)
            state.ready, state.subscribed = None, False
            for watch in state.watches:
                watch._break()


def _failed(future: asyncio.Future[None]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _fail(future: asyncio.Future[None], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: the waiters get it through their own await


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(*_DOWN):
        await pubsub.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8
