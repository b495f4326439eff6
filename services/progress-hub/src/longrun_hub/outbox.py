"""One client connection's bounded outbox and the loop that drains it into the socket.

Producers (the Redis listener, the seam, repairs) only ever append synchronously; one sender coroutine per
connection awaits the socket. Backpressure, in order:

1. below `hub_queue_size` queued frames everything is queued;
2. from there on, a progress event replaces the job's newest queued frame when that one is a progress
   event too (the frame then carries `"coalesced": k`, the number of events it stands for besides itself);
   status changes, snapshots and the terminal event are always queued, never replaced;
3. at `hub_queue_limit` frames, or when one send waits longer than `hub_send_timeout`, the client is too
   slow: it is closed with 1013 and resumes with `since` (nothing it received is lost, nothing is resent).

Frames of a replay the client asked for (`since`) are never coalesced, neither replaced nor replacing, and
do not count as pressure: the sender pulls the replay page by page (`Hub.replay_more`) only while fewer than
a page of frames is queued, so they stay bounded without closing a client that reads as fast as it can.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Protocol

from longrun_common.settings import Settings

from .frames import Event, error_frame, reconnect_frame
from .metrics import HubMetrics

log = logging.getLogger(__name__)

PROGRESS, STATUS, SNAPSHOT, CONTROL = range(4)

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009  # sent by uvicorn / websockets for a client frame over the hub's limit
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
SUBSCRIPTION_LIMIT = 4429  # only in multiplexed error frames (the socket stays open), never a close code


class Disconnected(Exception):
    """The peer is gone; nothing more can be sent."""


@dataclass(frozen=True)
class Limits:
    queue_size: int
    queue_limit: int
    send_timeout: float
    replay_page: int = 64  # events per XRANGE of a requested replay; the sender reads more below this many

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.hub_queue_size, max(settings.hub_queue_limit, settings.hub_queue_size + 1),
                   settings.hub_send_timeout, max(16, min(256, settings.hub_queue_size)))


class Watcher:
    """One connection watching one job: the last seq queued for it (and that event's ts), and its buffer of
    live events until it goes live (during the seam and while a requested replay is paged)."""

    __slots__ = ("buffer", "conn", "generation", "job_id", "last", "last_ts", "live", "replaying")

    def __init__(self, job_id: str, conn: Connection, since: int | None) -> None:
        self.job_id = job_id
        self.conn = conn
        self.last = since if since is not None else -1
        self.last_ts: float | None = None  # ts of the event `last` (None: not known)
        self.live = False
        self.replaying = False
        self.generation = 0  # the feed's connection count when the seam read (a reconnect since: re-check)
        self.buffer: list[Event] | None = []


class Owner(Protocol):
    """What a connection uses of its `Hub` (hub.py), which imports this module: a protocol, not an import."""

    @property
    def limits(self) -> Limits: ...

    @property
    def metrics(self) -> HubMetrics: ...

    def release(self, watcher: Watcher) -> None: ...

    def release_all(self, conn: Connection) -> None: ...

    async def replay_more(self, conn: Connection) -> None: ...


class Item:
    """A queued frame. Event frames keep their Event so a coalesced one can be rewritten."""

    __slots__ = ("close", "event", "job_id", "kind", "live", "replay", "seq", "skipped", "text")

    def __init__(self, kind: int, job_id: str, seq: int, text: str, event: Event | None = None,
                 live: bool = False, close: tuple[int, str] | None = None, replay: bool = False) -> None:
        self.kind = kind
        self.job_id = job_id
        self.seq = seq
        self.text = text
        self.event = event
        self.live = live
        self.replay = replay  # part of a replay the client asked for: never coalesced
        self.skipped = 0
        self.close = close


class Connection:
    """Base of the WebSocket and SSE connections: queueing, coalescing, closing, and the sender loop."""

    transport: ClassVar[str] = "ws"
    multiplexed: ClassVar[bool] = False

    __slots__ = ("_lifetime", "_sender", "_stuck", "_waiter", "closing", "gone", "hub", "items", "limits",
                 "metrics", "replay_queued", "replays", "send_started", "tail", "watchers")

    def __init__(self, hub: Owner) -> None:
        self.hub = hub
        self.limits: Limits = hub.limits
        self.metrics: HubMetrics = hub.metrics
        self.items: deque[Item] = deque()
        self.tail: dict[str, Item] = {}  # job id -> its newest queued frame (the only one coalescing may touch)
        self.watchers: dict[str, Watcher] = {}
        self.replays: list[Watcher] = []  # watchers with more of their replay to read, in turn
        self.replay_queued = 0  # replay frames in `items` (not pressure: bounded by paging)
        self.closing = False  # a close is queued: accept nothing more
        self.gone = False  # the peer left
        self.send_started = 0.0  # loop time the current send began (0: not sending); see `send_stuck`
        self._stuck = False  # the hub's sweep cancelled a send that took longer than `send_timeout`
        self._sender: asyncio.Task[None] | None = None  # the task running `run`
        self._waiter: asyncio.Future[None] | None = None
        self._lifetime: asyncio.TimerHandle | None = None

    # --- producer side (synchronous; called by the listener, the seam and repairs) ------------------------

    def push_event(self, watcher: Watcher, event: Event, live: bool, replay: bool = False) -> None:
        """Queue one event for a watcher (already checked to be its next seq). `replay`: part of a replay the
        client asked for, which is never coalesced (and is bounded by the paging, not by the queue limits)."""
        if self.closing:
            return
        items = self.items
        if not replay:
            pressure = len(items) - self.replay_queued
            if pressure >= self.limits.queue_size and event.is_progress:
                last = self.tail.get(watcher.job_id)
                if last is not None and last.kind == PROGRESS and not last.replay and last.event is not None:
                    skipped = last.skipped + 1
                    last.seq, last.event, last.live, last.skipped = event.seq, event, live, skipped
                    last.text = event.coalesced_text(skipped)
                    self.metrics.coalesced.inc()
                    return
            if pressure >= self.limits.queue_limit:
                self.too_slow()
                return
        kind = PROGRESS if event.is_progress else STATUS
        waiter = self._waiter
        if waiter is not None and not items and not waiter.done() and self.send_now(event.text):
            # The sender is idle with nothing queued and the socket took the frame at once: no need to wake it.
            self._count(kind, live, event)
            return
        item = Item(kind, watcher.job_id, event.seq, event.text, event, live, replay=replay)
        items.append(item)
        if replay:
            self.replay_queued += 1
        self.tail[watcher.job_id] = item
        self._wake()

    def replay_room(self) -> bool:
        """True when another page of a replay may be queued now."""
        return len(self.items) < self.limits.replay_page

    def add_replay(self, watcher: Watcher) -> None:
        """The watcher's replay continues: the sender reads its next page when the queue has room."""
        self.replays.append(watcher)
        self._wake()

    def replay_failed(self, watcher: Watcher) -> None:
        """Redis did not answer for the next page: the client resumes (everything queued is still sent)."""
        if self.multiplexed:
            self.hub.release(watcher)
            self.push_control(error_frame(watcher.job_id, CLOSE_TRY_AGAIN, "Redis unavailable; subscribe again"),
                              job_id=watcher.job_id)
        else:
            self.close(CLOSE_TRY_AGAIN, "Redis unavailable; reconnect with since")
            self.hub.release_all(self)

    def push_snapshot(self, watcher: Watcher, seq: int, text: str) -> None:
        if self.closing:
            return
        if len(self.items) - self.replay_queued >= self.limits.queue_limit:  # (subscribe, unsubscribe, … unread)
            self.too_slow()
            return
        item = Item(SNAPSHOT, watcher.job_id, seq, text)
        self.items.append(item)
        self.tail[watcher.job_id] = item
        self._wake()

    def push_control(self, text: str | None, close: tuple[int, str] | None = None, job_id: str = "") -> None:
        """A hub frame (reconnect, error) and/or a close; a close ends the queue. A frame without a close counts
        against `queue_limit` like any other (a client that sends bad frames and never reads what it is
        answered is too slow); only a close always gets in, as it is the last item."""
        if self.closing:
            return
        if close is None and len(self.items) - self.replay_queued >= self.limits.queue_limit:
            self.too_slow()
            return
        self.items.append(Item(CONTROL, job_id, 0, text or "", close=close))
        if close is not None:
            self.closing = True
        self._wake()

    def close(self, code: int, reason: str) -> None:
        """Close after everything already queued has been sent."""
        self.push_control(None, (code, reason))

    def too_slow(self) -> None:
        """The client cannot keep up even with coalescing: drop its queue and close it with 1013."""
        if self.closing:
            return
        log.info("closing a %s client that cannot keep up (%d frames queued)", self.transport, len(self.items))
        self.metrics.slow_clients.inc()
        self.items.clear()
        self.tail.clear()
        self.replays.clear()
        self.replay_queued = 0
        self.push_control(None, (CLOSE_TRY_AGAIN, "client too slow; reconnect with since"))
        self.hub.release_all(self)

    def reconnect(self, reason: str) -> None:
        """Tell the client where to resume, then close 1012 (max lifetime, shutdown)."""
        if self.closing:
            return
        since: int | dict[str, int]
        if self.multiplexed:
            since = {job_id: w.last for job_id, w in self.watchers.items() if w.last >= 0}
        else:
            watcher = next(iter(self.watchers.values()), None)
            since = watcher.last if watcher is not None and watcher.last >= 0 else 0
        self.push_control(reconnect_frame(reason, since), (CLOSE_RESTART, reason))
        self.hub.release_all(self)

    def job_finished(self, watcher: Watcher) -> None:
        """The watcher's terminal event is queued: single-job connections close after it (1000)."""
        if not self.multiplexed:
            self.close(CLOSE_NORMAL, "job finished")

    def peer_left(self) -> None:
        self.gone = True
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- lifetime --------------------------------------------------------------------------------------------

    def start_lifetime(self, seconds: float) -> None:
        if seconds > 0:
            self._lifetime = asyncio.get_running_loop().call_later(seconds, self.reconnect, "max_lifetime")

    def stop_lifetime(self) -> None:
        if self._lifetime is not None:
            self._lifetime.cancel()
            self._lifetime = None

    # --- consumer side ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send queued frames until a close is sent, the client is too slow, or the peer leaves."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._sender = task
        items = self.items
        try:
            while True:
                if self.gone:
                    return
                if self.replays and not self.closing and self.replay_room():
                    await self.hub.replay_more(self)  # the next page of a replay, while the queue is short
                    continue
                if not items:
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                item = items.popleft()
                if item.replay:
                    self.replay_queued -= 1
                if self.tail.get(item.job_id) is item:
                    del self.tail[item.job_id]
                # No timer per send: the hub's sweep (`Hub.sweep`) cancels a send stuck for `send_timeout`.
                self.send_started = loop.time()
                try:
                    if item.text:
                        await self.send_item(item)
                    if item.close is not None:
                        await self.send_close(*item.close)
                        return
                except asyncio.CancelledError:
                    self.send_started = 0.0  # (before _final_close, which has its own deadline)
                    if not self._stuck:
                        raise
                    self._stuck = False
                    if task.uncancel() > 0:  # also cancelled by someone else: honour that
                        raise
                    if item.close is None:
                        self.too_slow()
                        await self._final_close(items)
                    return
                finally:
                    self.send_started = 0.0
                self._count(item.kind, item.live, item.event)
        except Disconnected:
            self.gone = True
        finally:
            self._sender = None

    def send_stuck(self, now: float) -> bool:
        """Called by the hub's periodic sweep: cancel the current send if it has waited `send_timeout` (the
        sender then closes the client with 1013, as if it timed out). True when it did."""
        started = self.send_started
        sender = self._sender
        if not started or sender is None or self._stuck or now - started < self.limits.send_timeout:
            return False
        self._stuck = True
        sender.cancel()
        return True

    async def _final_close(self, items: deque[Item]) -> None:
        """Send the 1013 close queued by too_slow, if the socket takes it in time (a client that reads
        again soon still learns why it was closed, after the frames already in flight)."""
        while items:
            item = items.popleft()
            if item.close is not None:
                try:
                    async with asyncio.timeout(2 * self.limits.send_timeout):
                        await self.send_close(*item.close)
                except (TimeoutError, Disconnected):
                    pass
                return

    def _count(self, kind: int, live: bool, event: Event | None) -> None:
        metrics = self.metrics
        if kind in (PROGRESS, STATUS):
            metrics.delivered_by[self.transport].inc()
            if live and event is not None:
                metrics.lag_by[self.transport].observe(max(0.0, time.time() - event.ts))
        elif kind == SNAPSHOT:
            metrics.snapshots_by[self.transport].inc()

    # --- transport-specific -----------------------------------------------------------------------------------

    def send_now(self, text: str) -> bool:
        """Send a frame synchronously if the transport can without waiting (then True); False: queue it."""
        return False

    async def send_item(self, item: Item) -> None:
        raise NotImplementedError

    async def send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError
