"""Long-polls that wait on a job's channel, over the process's one pub/sub connection (longrun_common.pubsub).

A watcher is handed out only after Redis confirmed the SUBSCRIBE of its channel on the current connection, so
a snapshot read afterwards cannot miss an event published in between (the seam rule of docs/INTERNALS.md).
Channels are reference-counted: the first watcher of a job subscribes, the last one lets it go.

Waiters sharing a SUBSCRIBE that Redis does not confirm within `subscribe_timeout` give up together (and fall
back to SQL), not one full timeout after another. When the connection is lost every watcher is woken with
`broken` set (events may have been missed: the long-poll answers from a fresh read), and new watchers are
refused until the subscriber has reconnected (callers fall back to SQL at once rather than wait for Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from longrun_common.keys import Keys
from longrun_common.pubsub import Subscriber
from longrun_common.states import TERMINAL

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 3.0  # PING the connection this often; lost after three unanswered intervals


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
    """One job channel's watchers, and the give-up signal shared by those waiting on one confirmation."""

    __slots__ = ("confirmation", "give_up", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.confirmation: asyncio.Future[None] | None = None  # the subscriber's future the waiters share
        self.give_up: asyncio.Future[None] | None = None  # failed when that confirmation took too long


class LiveEvents:
    """The process-wide subscription: `async with live.watch(job_id) as w` then `await w.wait(t)`."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        subscribe_timeout: float = 5.0,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._subscriber = Subscriber(
            url, keys, on_message=self._dispatch, on_lost=self._break_all, backoff_min=0.1,
            health_interval=health_interval, name="gateway pub/sub",
        )
        self._channels: dict[str, _Channel] = {}
        self._subscribe_timeout = subscribe_timeout

    @property
    def channels(self) -> int:
        """How many job channels have watchers (for tests and metrics)."""
        return len(self._channels)

    @property
    def healthy(self) -> bool:
        """False while the subscriber is (re)connecting (watchers are refused; callers fall back to SQL)."""
        return self._subscriber.connected

    @property
    def settled(self) -> bool:
        """True when no SUBSCRIBE is waiting to be written or confirmed."""
        return self._subscriber.settled

    async def start(self) -> None:
        """Connect now, so the first long-poll is live; if Redis is down, the subscriber keeps trying."""
        await self._subscriber.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._subscribe_timeout):
                await self._subscriber.attempted.wait()

    async def aclose(self) -> None:
        await self._subscriber.stop()
        self._break_all(None)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """Subscribe to the job's channel (confirmed by Redis) for the duration of the block."""
        if not self._subscriber.connected:
            raise LiveUnavailable("reconnecting to redis")
        watch = Watch()
        state = self._channels.get(job_id)
        if state is None:
            state = self._channels[job_id] = _Channel()
        state.watches.add(watch)
        try:
            confirmation = self._subscriber.add(job_id)
            if state.confirmation is not confirmation or state.give_up is None or state.give_up.done():
                state.confirmation, state.give_up = confirmation, asyncio.get_running_loop().create_future()
            give_up = state.give_up
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    await asyncio.wait({confirmation, give_up}, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                # Not confirmed in time: everyone waiting on this SUBSCRIBE gives up now, not one by one.
                _fail(give_up, LiveUnavailable("redis did not confirm the subscription in time"))
            if not confirmation.done():
                raise LiveUnavailable("redis did not confirm the subscription in time")
        except BaseException:  # cancellation too: the watcher must not linger on its channel
            self._remove(job_id, watch)
            raise
        watch.broken = False  # a loss before the confirmation cost nothing: the snapshot is read after it
        watch._event.clear()
        try:
            yield watch
        finally:
            self._remove(job_id, watch)

    def _remove(self, job_id: str, watch: Watch) -> None:
        state = self._channels.get(job_id)
        if state is None:
            return
        state.watches.discard(watch)
        if not state.watches:
            del self._channels[job_id]
            self._subscriber.discard(job_id)

    def _dispatch(self, job_id: str, data: bytes) -> None:
        state = self._channels.get(job_id)
        if state is None:
            return
        try:
            event = json.loads(data)
            seq, status = int(event["seq"]), event.get("status")
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed event on job %s", job_id)
            return
        terminal = isinstance(status, str) and status in TERMINAL
        for watch in state.watches:
            watch._notify(seq, terminal)

    def _break_all(self, _exc: BaseException | None) -> None:
        """After a disconnect nobody can trust that they heard everything: wake every watcher, `broken`."""
        for state in self._channels.values():
            for watch in state.watches:
                watch._break()


def _fail(future: asyncio.Future[None], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: the waiters see it through their own check
