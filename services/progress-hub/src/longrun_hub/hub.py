"""The hub: who watches which job, the gap-free seam, and repairs from the job's stream.

Seam (per watcher): attach to the job's channel and wait until Redis confirmed the subscription; only then
read the snapshot (and, for `since=N`, the stream after N) in one MULTI, so the two agree; queue a snapshot
or the replay; then deliver buffered and later live events with seq > last. Any event that is not exactly
`last + 1` is a gap: the channel buffers live events, re-reads the stream after the lowest `last` of its
watchers, and hands every watcher what it misses (a watcher whose events were trimmed gets a fresh snapshot).
After the pub/sub connection comes back every watched channel is repaired the same way.
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
from longrun_common.reader import decode_snapshot, stream_range
from longrun_common.settings import Settings
from longrun_common.tokens import StreamScope

from .feed import RedisFeed
from .frames import TERMINAL, Event, snapshot_frame
from .metrics import HubMetrics
from .outbox import Connection, Limits

log = logging.getLogger(__name__)

# Tests pass a hook to force the seam's races: awaited with ("subscribed" | "read", job_id).
SeamHook = Callable[[str, str], Awaitable[None]]

REPAIR_BUFFER_MAX = 10_000  # live events held per channel while it repairs; older ones are re-read anyway


class Outcome(enum.Enum):
    LIVE = "live"  # snapshot or replay queued; live events follow
    FINISHED = "finished"  # the job had ended and the client already has everything
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"  # Redis did not answer in time


class Watcher:
    """One connection watching one job: the last seq queued for it, and its seam buffer until it goes live."""

    __slots__ = ("buffer", "conn", "job_id", "last", "live")

    def __init__(self, job_id: str, conn: Connection, since: int | None) -> None:
        self.job_id = job_id
        self.conn = conn
        self.last = since if since is not None else -1
        self.live = False
        self.buffer: list[Event] | None = []


class Channel:
    """The watchers of one job in this process."""

    __slots__ = ("buffer", "job_id", "recheck", "repairing", "watchers")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.watchers: set[Watcher] = set()
        self.repairing = False
        self.recheck = False
        self.buffer: list[Event] = []


class Hub:
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
        self.redis: aioredis.Redis[bytes] = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.hub_redis_pool_size, timeout=settings.hub_subscribe_timeout
            )
        )
        self.feed = RedisFeed(
            settings.redis_url,
            self.keys,
            self.metrics,
            on_message=self.on_message,
            on_resubscribed=self.on_resubscribed,
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
                generation = self.feed.connects
                if self.seam_hook is not None:
                    await self.seam_hook("subscribed", job_id)
                snapshot, events = await self.read(job_id, since)
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
        tenant = snapshot.get("tenant")
        if not tenant or not scope.allows(str(tenant), job_id):
            self.release(watcher)
            return Outcome.FORBIDDEN
        if watcher.conn.watchers.get(job_id) is not watcher:  # released meanwhile (client left, too slow)
            return Outcome.FINISHED
        outcome = self._start(watcher, snapshot, events, since)
        channel = self.channels.get(job_id)
        if watcher.live and channel is not None and self.feed.connects != generation:
            self.request_repair(channel)  # the pub/sub connection was replaced while we read: re-check
        return outcome

    def _start(self, watcher: Watcher, snapshot: dict[str, Any], events: list[Event], since: int | None) -> Outcome:
        """Queue the snapshot or the replay, then the buffered live events (synchronous: no event can slip by)."""
        conn, job_id = watcher.conn, watcher.job_id
        seq = int(snapshot["seq"])
        terminal = snapshot.get("status") in TERMINAL
        resumable = since is not None and (
            since == seq or (since < seq and bool(events) and events[0].seq == since + 1 and events[-1].seq == seq)
        )
        if not resumable:
            conn.push_snapshot(watcher, seq, snapshot_frame(job_id, snapshot))
            watcher.last = seq
            if terminal:
                self._finished(watcher)
                return Outcome.LIVE
        else:
            if since == seq and terminal:
                self.release(watcher)
                return Outcome.FINISHED
            for event in events:
                self._offer(watcher, event, live=False)
            if watcher.conn.watchers.get(job_id) is not watcher:
                return Outcome.LIVE  # the replay ended with the terminal event
        watcher.live = True
        buffered, watcher.buffer = watcher.buffer or [], None
        for event in buffered:
            if not self._offer(watcher, event, live=True):
                channel = self.channels.get(job_id)
                if channel is not None:
                    channel.buffer.extend(e for e in buffered if e.seq > watcher.last)
                    self.request_repair(channel)
                break
        return Outcome.LIVE

    async def read(self, job_id: str, after: int | None) -> tuple[dict[str, Any] | None, list[Event]]:
        """Snapshot and (when `after` is given) the stream after it, in one MULTI so they agree."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            if after is not None:
                pipe.xrange(self.keys.stream(job_id), min=stream_range(after))
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

    # --- live delivery ------------------------------------------------------------------------------------

    def on_message(self, job_id: str, raw: bytes) -> None:
        """One pub/sub message (called synchronously by the feed's listener)."""
        channel = self.channels.get(job_id)
        if channel is None:
            return
        event = Event.parse(raw)
        if event is None:
            log.warning("ignoring a malformed event on job %s: %.200r", job_id, raw)
            return
        if channel.repairing:
            self._hold(channel, event)
            return
        gap = False
        for watcher in tuple(channel.watchers):
            if watcher.live:
                if not self._offer(watcher, event, live=True):
                    gap = True
            elif watcher.buffer is not None:
                watcher.buffer.append(event)
        if gap:
            self._hold(channel, event)
            self.request_repair(channel)

    def _offer(self, watcher: Watcher, event: Event, live: bool) -> bool:
        """Queue `event` if it is the watcher's next seq; False on a gap (nothing queued)."""
        if event.seq <= watcher.last:
            return True
        if event.seq != watcher.last + 1:
            return False
        watcher.last = event.seq
        watcher.conn.push_event(watcher, event, live)
        if not live:
            self.metrics.replayed.inc()
        if event.terminal:
            self._finished(watcher)
        return True

    def _finished(self, watcher: Watcher) -> None:
        self.release(watcher)
        watcher.conn.job_finished(watcher)

    @staticmethod
    def _hold(channel: Channel, event: Event) -> None:
        channel.buffer.append(event)
        if len(channel.buffer) > REPAIR_BUFFER_MAX:
            del channel.buffer[: len(channel.buffer) - REPAIR_BUFFER_MAX]

    # --- repair -------------------------------------------------------------------------------------------

    def on_resubscribed(self) -> None:
        """The pub/sub connection is back: events may have been missed, re-check every watched job."""
        for channel in list(self.channels.values()):
            if self.feed.connects > 1:
                self.metrics.repair_reconnect.inc()
            self.request_repair(channel, count=False)

    def request_repair(self, channel: Channel, count: bool = True) -> None:
        if channel.repairing:
            channel.recheck = True
            return
        if count:
            self.metrics.repair_gap.inc()
        channel.repairing = True
        task = asyncio.get_running_loop().create_task(self._repair(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, channel: Channel) -> None:
        delay = self.settings.hub_redis_backoff_min
        try:
            while self.channels.get(channel.job_id) is channel:
                channel.recheck = False
                try:
                    ready = self.feed.ready(channel.job_id)
                    if ready is None:
                        return
                    async with asyncio.timeout(self.settings.hub_subscribe_timeout):
                        await asyncio.shield(ready)
                    async with self._repair_slots:
                        caught_up = self._catch_up(channel, await self._read_for(channel))
                    if not caught_up:
                        await asyncio.sleep(0.01)  # live events are ahead of what we read: read again
                        continue
                except (TimeoutError, RedisError, OSError) as exc:
                    log.info("repair of %s waits for Redis: %s", channel.job_id, exc or type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.hub_redis_backoff_max)
                    continue
                if not channel.recheck:
                    return
        finally:
            channel.repairing = False
            # Anything still held belongs to watchers that are gone or already past it.
            channel.buffer = []

    async def _read_for(self, channel: Channel) -> tuple[dict[str, Any] | None, list[Event]] | None:
        live = [w.last for w in channel.watchers if w.live]
        if not live:
            return None
        return await self.read(channel.job_id, min(live))

    def _catch_up(self, channel: Channel, read: tuple[dict[str, Any] | None, list[Event]] | None) -> bool:
        """Hand each watcher what it misses, then the held live events. False when a gap remains."""
        if read is not None:
            snapshot, events = read
            first = events[0].seq if events else None
            for watcher in tuple(channel.watchers):
                if not watcher.live:
                    continue
                if snapshot is not None and "seq" in snapshot:
                    seq = int(snapshot["seq"])
                    trimmed = first is None or first > watcher.last + 1
                    if watcher.last < seq and trimmed:  # the stream no longer has what it misses
                        watcher.conn.push_snapshot(watcher, seq, snapshot_frame(channel.job_id, snapshot))
                        watcher.last = seq
                        if snapshot.get("status") in TERMINAL:
                            self._finished(watcher)
                            continue
                for event in events:
                    if not self._offer(watcher, event, live=False):
                        break
        held, channel.buffer = channel.buffer, []
        for index, event in enumerate(held):
            gap = False
            for watcher in tuple(channel.watchers):
                if watcher.live:
                    if not self._offer(watcher, event, live=True):
                        gap = True
                elif watcher.buffer is not None:
                    watcher.buffer.append(event)
            if gap:
                channel.buffer = held[index:] + channel.buffer
                return False
        return True

    async def ping_redis(self) -> bool:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2):
                return bool(await self.redis.ping())
        return False
