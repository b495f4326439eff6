"""The hub: who watches which job, and the gap-free seam.

Seam (per watcher): attach to the job's channel and wait until Redis confirmed the subscription; only then
read the snapshot (and, for `since=N`, the first page of the stream after N) in one MULTI, so the two agree;
queue a snapshot, or start the replay; then deliver buffered and later live events with seq > last.

A replay the client asked for (`since`) is paged: one page (`Limits.replay_page` events, `XRANGE … COUNT`)
at a time, read again by the connection's sender whenever its queue runs short, so a fast client gets all of
it and a slow one never has more than about a page of it queued. Replayed frames are never coalesced; live
events that arrive meanwhile wait in the watcher's buffer until the replay has caught up with them.

Live delivery and the repairs from the job's stream are in delivery.py (`Delivery`, this class's base).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from longrun_common.keys import Keys
from longrun_common.pubsub import Subscriber
from longrun_common.reader import decode_snapshot, stream_range
from longrun_common.redis_clients import async_blocking_redis
from longrun_common.settings import Settings
from longrun_common.states import TERMINAL
from longrun_common.tokens import StreamScope

from .delivery import Channel, Delivery, snapshot_ts
from .frames import Event
from .metrics import HubMetrics
from .outbox import Connection, Limits, Watcher

log = logging.getLogger(__name__)

# Tests pass a hook to force the seam's races: awaited with ("subscribed" | "read", job_id).
SeamHook = Callable[[str, str], Awaitable[None]]


class Outcome(enum.Enum):
    LIVE = "live"  # snapshot or replay queued (or being paged); live events follow
    FINISHED = "finished"  # the job had ended and the client already has everything
    GONE = "gone"  # the connection let go of the job meanwhile (closing, too slow, left): nothing to answer
    NOT_FOUND = "not_found"  # no such job, or another tenant's (never revealed)
    FORBIDDEN = "forbidden"  # a job token for another job
    UNAVAILABLE = "unavailable"  # Redis did not answer in time


class Hub(Delivery):
    """Fan-out of job events from one pub/sub connection to every local client, gap-free."""

    def __init__(
        self,
        settings: Settings,
        metrics: HubMetrics | None = None,
        *,
        seam_hook: SeamHook | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.metrics = metrics or HubMetrics()
        self.limits = Limits.from_settings(settings)
        self.seam_hook = seam_hook
        # Snapshot and replay reads; a connection a Redis restart closed is replaced unnoticed (redis_clients.py).
        self.redis: aioredis.Redis[bytes] = async_blocking_redis(
            settings.redis_url, max_connections=settings.hub_redis_pool_size, timeout=settings.hub_subscribe_timeout
        )
        self.feed = Subscriber(
            settings.redis_url,
            self.keys,
            on_message=self.on_message,
            on_connected=self.on_resubscribed,
            on_subscriptions=self.metrics.subscriptions.set,
            name="hub pub/sub",
            backoff_min=settings.hub_redis_backoff_min,
            backoff_max=settings.hub_redis_backoff_max,
            health_interval=settings.hub_redis_health_interval,
        )
        self.channels: dict[str, Channel] = {}
        self.connections: set[Connection] = set()
        self.accepting = True
        self._repair_slots = asyncio.Semaphore(16)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no client is connected (drain waits for it)
        self._idle.set()

    async def start(self) -> None:
        await self.feed.start()
        task = asyncio.get_running_loop().create_task(self.sweep())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep(self) -> None:
        """One periodic check for every connection instead of a timer per frame sent: a send that has waited
        `hub_send_timeout` is cancelled and its client closed with 1013 (see `Connection.send_stuck`)."""
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(1.0, self.limits.send_timeout / 8))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self.connections):
                if conn.send_started:
                    conn.send_stuck(now)

    async def stop(self) -> None:
        self.accepting = False
        for task in list(self._tasks):
            task.cancel()
        await self.feed.stop()
        await self.redis.connection_pool.disconnect()

    # --- connections ------------------------------------------------------------------------------------

    def add_connection(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._idle.clear()
        self.metrics.connections_by[conn.transport].inc()

    def remove_connection(self, conn: Connection) -> None:
        self.release_all(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections_by[conn.transport].dec()
            if not self.connections:
                self._idle.set()

    async def drain(self, reason: str = "shutdown", grace: float | None = None) -> None:
        """Tell every client to resume elsewhere (reconnect frame, close 1012) and wait for them to go."""
        self.accepting = False
        for conn in list(self.connections):
            conn.reconnect(reason)
        grace = self.settings.hub_shutdown_grace if grace is None else grace
        if self.connections and grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()

    # --- the seam -----------------------------------------------------------------------------------------

    async def watch(self, conn: Connection, job_id: str, since: int | None, scope: StreamScope) -> Outcome:
        """Start delivering `job_id` to `conn`: snapshot (or replay after `since`), then live, gap-free."""
        watcher = Watcher(job_id, conn, since)
        self._attach(watcher)
        try:
            ready = self.feed.add(job_id)
            async with asyncio.timeout(self.settings.hub_subscribe_timeout):
                await asyncio.shield(ready)
                watcher.generation = self.feed.connects
                if self.seam_hook is not None:
                    await self.seam_hook("subscribed", job_id)
                snapshot, events = await self.read(job_id, since, count=self.limits.replay_page)
                if self.seam_hook is not None:
                    await self.seam_hook("read", job_id)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("cannot start watching %s: %s", job_id, exc or type(exc).__name__)
            self.release(watcher)
            return Outcome.UNAVAILABLE
        except BaseException:
            self.release(watcher)
            raise
        if snapshot is None or "seq" not in snapshot or not snapshot.get("status"):
            self.release(watcher)
            return Outcome.NOT_FOUND
        refused = self._refusal(snapshot, job_id, scope)
        if refused is not None:
            self.release(watcher)
            return refused
        if watcher.conn.watchers.get(job_id) is not watcher:  # released meanwhile (client left, too slow)
            return Outcome.GONE
        return self._start(watcher, snapshot, events, since)

    @staticmethod
    def _refusal(snapshot: dict[str, Any], job_id: str, scope: StreamScope) -> Outcome | None:
        """Why this token may not watch the job (None: it may).

        Another tenant's job is NOT_FOUND, exactly like a missing one (REST answers 404 too): the hub never
        confirms that a job id exists elsewhere. FORBIDDEN is only a token for another job of the same tenant.
        A hash without `tenant` was recreated by a worker's event after Redis lost its data, before the
        reconciler restored it: only a job token naming exactly this job opens it (the gateway minted that
        token after checking the job is the tenant's); a tenant token cannot prove ownership, so the job is
        treated as not known yet (NOT_FOUND).
        """
        tenant = snapshot.get("tenant")
        if not tenant:
            return None if scope.job_id == job_id else Outcome.NOT_FOUND
        if str(tenant) != scope.tenant:
            return Outcome.NOT_FOUND
        if scope.job_id is not None and scope.job_id != job_id:
            return Outcome.FORBIDDEN
        return None

    def _start(self, watcher: Watcher, snapshot: dict[str, Any], events: list[Event], since: int | None) -> Outcome:
        """Queue the snapshot or start the replay (synchronous: no event can slip by)."""
        conn, job_id = watcher.conn, watcher.job_id
        seq = int(snapshot["seq"])
        terminal = snapshot.get("status") in TERMINAL
        if since is not None and since == seq:  # the client has everything so far
            if terminal:
                self.release(watcher)
                return Outcome.FINISHED
            watcher.last_ts = snapshot_ts(snapshot)
            self._go_live(watcher)
            return Outcome.LIVE
        resumable = (
            since is not None and since < seq and bool(events) and events[0].seq == since + 1
            and (len(events) >= self.limits.replay_page or events[-1].seq == seq)
        )
        if not resumable:  # no `since`, or the stream no longer holds what comes after it
            self._push_snapshot(watcher, snapshot, seq)
            if conn.watchers.get(job_id) is watcher:
                self._go_live(watcher)
            return Outcome.LIVE
        watcher.replaying = True
        if conn.replay_room():
            self._replay(watcher, snapshot, events)
        else:  # the queue is busy (other jobs' replays): the sender reads this page again when it has room
            conn.add_replay(watcher)
        return Outcome.LIVE

    def _replay(self, watcher: Watcher, snapshot: dict[str, Any] | None, events: list[Event]) -> None:
        """Queue one page of a requested replay (never coalesced); go live once it has caught up."""
        seq = int(snapshot["seq"]) if snapshot is not None and "seq" in snapshot else None
        if (events and events[0].seq != watcher.last + 1) or (seq is not None and (
                seq < watcher.last or (not events and seq > watcher.last))):
            # What comes next is no longer in the stream (trimmed meanwhile, or Redis lost it): a snapshot.
            if seq is not None and snapshot is not None:
                self._push_snapshot(watcher, snapshot, seq)
            if watcher.conn.watchers.get(watcher.job_id) is watcher:
                self._go_live(watcher)
            return
        complete = len(events) < self.limits.replay_page  # the page reached the end of the stream
        for event in events:
            if not self._offer(watcher, event, live=False, replay=True):
                complete = True  # a hole in the stream itself: go live, the repair deals with it
                break
            if not watcher.replaying:
                return  # the replay ended with the terminal event
        buffered = watcher.buffer
        if complete or (buffered and buffered[0].seq <= watcher.last + 1):
            self._go_live(watcher)  # the stream is read to its end, or live events continue from here
        else:
            watcher.conn.add_replay(watcher)

    async def replay_more(self, conn: Connection) -> None:
        """Read and queue the next page of one replay (called by the connection's sender when it has room)."""
        watcher = conn.replays.pop(0)
        if conn.watchers.get(watcher.job_id) is not watcher or not watcher.replaying:
            return  # released or live meanwhile
        try:
            async with asyncio.timeout(self.settings.hub_subscribe_timeout):
                snapshot, events = await self.read(watcher.job_id, watcher.last, count=self.limits.replay_page)
        except (TimeoutError, RedisError, OSError) as exc:
            if conn.watchers.get(watcher.job_id) is watcher:
                log.warning("cannot continue the replay of %s: %s", watcher.job_id, exc or type(exc).__name__)
                conn.replay_failed(watcher)
            return
        if conn.watchers.get(watcher.job_id) is watcher and watcher.replaying:
            self._replay(watcher, snapshot, events)

    def _go_live(self, watcher: Watcher) -> None:
        """Deliver the buffered live events after `last`; from now on live events go straight to the queue."""
        watcher.replaying = False
        watcher.live = True
        buffered, watcher.buffer = watcher.buffer or [], None
        channel = self.channels.get(watcher.job_id)
        for index, event in enumerate(buffered):
            if not self._offer(watcher, event, live=True):
                if channel is not None:
                    channel.buffer.extend(e for e in buffered[index:] if e.seq > watcher.last)
                    self.request_repair(channel)
                return
            if not watcher.live:
                return  # that was the terminal event
        if watcher.live and channel is not None and self.feed.connects != watcher.generation:
            self.request_repair(channel)  # the pub/sub connection was replaced meanwhile: re-check

    async def read(self, job_id: str, after: int | None,
                   count: int | None = None) -> tuple[dict[str, Any] | None, list[Event]]:
        """Snapshot and (when `after` is given) the stream after it (at most `count` events), in one MULTI
        so they agree."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            if after is not None:
                pipe.xrange(self.keys.stream(job_id), min=stream_range(after), count=count)
            result = await pipe.execute()
        snapshot = decode_snapshot(result[0])
        events: list[Event] = []
        if after is not None:
            for _entry_id, fields in result[1]:
                event = Event.parse(fields.get(b"e", b""))
                if event is not None:
                    events.append(event)
        return snapshot, events

    # --- registry -----------------------------------------------------------------------------------------

    def _attach(self, watcher: Watcher) -> None:
        channel = self.channels.get(watcher.job_id)
        if channel is None:
            channel = self.channels[watcher.job_id] = Channel(watcher.job_id)
        channel.watchers.add(watcher)
        watcher.conn.watchers[watcher.job_id] = watcher
        self.metrics.watchers.inc()

    def release(self, watcher: Watcher) -> None:
        """Stop delivering to this watcher; the last one out unsubscribes the job."""
        conn = watcher.conn
        if conn.watchers.get(watcher.job_id) is watcher:
            del conn.watchers[watcher.job_id]
        watcher.live = False
        watcher.replaying = False
        watcher.buffer = None
        channel = self.channels.get(watcher.job_id)
        if channel is None or watcher not in channel.watchers:
            return
        channel.watchers.discard(watcher)
        self.metrics.watchers.dec()
        if not channel.watchers:
            del self.channels[watcher.job_id]
            self.feed.discard(watcher.job_id)

    def release_all(self, conn: Connection) -> None:
        for watcher in list(conn.watchers.values()):
            self.release(watcher)

    async def ping_redis(self) -> bool:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2):
                return bool(await self.redis.ping())
        return False


