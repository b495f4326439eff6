"""What happens after the seam (hub.py): live events fanned out to the watchers of a job, gap-free, and the
repairs from the job's stream when they are not (a gap, a pub/sub reconnect, a job whose seq went back).

Any live event that is not exactly `last + 1` is a gap: the channel buffers live events, re-reads the stream
after the lowest `last` of its watchers, and hands every watcher what it misses (a watcher whose events were
trimmed gets a fresh snapshot). After the pub/sub connection comes back every watched channel is repaired the
same way. If Redis lost its data the job's seq can go back: a live event older than what a watcher has but
newer in time makes the channel re-read the hash, and a watcher ahead of the hash gets a fresh snapshot and
continues from its seq.

`Delivery` is a part of `Hub` (its base class), split off by role: it works on the hub's channels and
watchers, and names what else it uses of the hub below.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from longrun_common import telemetry
from longrun_common.pubsub import Subscriber
from longrun_common.settings import Settings
from longrun_common.states import TERMINAL

from .frames import Event, snapshot_frame
from .metrics import HubMetrics
from .outbox import Watcher

log = logging.getLogger(__name__)

REPAIR_BUFFER_MAX = 10_000  # live events held per channel while it repairs; older ones are re-read anyway


class Channel:
    """The watchers of one job in this process."""

    __slots__ = ("buffer", "job_id", "recheck", "repairing", "watchers")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.watchers: set[Watcher] = set()
        self.repairing = False
        self.recheck = False
        self.buffer: list[Event] = []


class Delivery:
    """Live delivery and repair; the base class of `Hub`, which sets the attributes below."""

    settings: Settings
    metrics: HubMetrics
    feed: Subscriber
    channels: dict[str, Channel]
    _tasks: set[asyncio.Task[None]]
    _repair_slots: asyncio.Semaphore

    def release(self, watcher: Watcher) -> None:
        raise NotImplementedError  # Hub's

    async def read(self, job_id: str, after: int | None,
                   count: int | None = None) -> tuple[dict[str, Any] | None, list[Event]]:
        raise NotImplementedError  # Hub's

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
        if telemetry.enabled():
            # One span per event fanned out, linked to the span that published it (not nested: one event goes
            # to many clients, long after the publisher's span ended).
            with telemetry.linked_span(f"deliver {event.type}", event.data.get("traceparent"), attributes={
                    "longrun.job_id": job_id, "longrun.seq": event.seq, "longrun.watchers": len(channel.watchers)}):
                self._deliver(channel, event)
        else:
            self._deliver(channel, event)

    def _deliver(self, channel: Channel, event: Event) -> None:
        if channel.repairing:
            self._hold(channel, event)
            return
        gap, suspect = self._fan_out(channel, event)
        if gap:
            self._hold(channel, event)
            self.request_repair(channel)
        elif suspect:
            self.request_repair(channel, count=False)

    def _fan_out(self, channel: Channel, event: Event) -> tuple[bool, bool]:
        """Offer a live event to every watcher (those not live yet buffer it): (a gap, a possible reset).

        An event at or below a watcher's `last` is normally a repeat (the seam or a repair read it first);
        one that is newer in time than the watcher's last event means the job's seq went back, so the
        channel re-reads the hash (see `_catch_up`)."""
        gap = suspect = False
        for watcher in tuple(channel.watchers):
            if watcher.live:
                if event.seq <= watcher.last:
                    if watcher.last_ts is not None and event.ts > watcher.last_ts:
                        suspect = True
                elif not self._offer(watcher, event, live=True):
                    gap = True
            elif watcher.buffer is not None:
                self._buffer(watcher, event)
        return gap, suspect

    def _offer(self, watcher: Watcher, event: Event, live: bool, replay: bool = False) -> bool:
        """Queue `event` if it is the watcher's next seq; False on a gap (nothing queued)."""
        if event.seq <= watcher.last:
            return True
        if event.seq != watcher.last + 1:
            return False
        watcher.last = event.seq
        watcher.last_ts = event.ts
        watcher.conn.push_event(watcher, event, live, replay)
        if not live:
            self.metrics.replayed.inc()
        if event.terminal:
            self._finished(watcher)
        return True

    @staticmethod
    def _buffer(watcher: Watcher, event: Event) -> None:
        """Keep a live event for a watcher that is not live yet; the oldest go first (they are re-read)."""
        buffer = watcher.buffer
        if buffer is not None:
            buffer.append(event)
            if len(buffer) > REPAIR_BUFFER_MAX:
                del buffer[: len(buffer) - REPAIR_BUFFER_MAX]

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
        if self.feed.connects > 1:
            self.metrics.redis_reconnects.inc()
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

    async def _read_for(self, channel: Channel) -> tuple[int, tuple[dict[str, Any] | None, list[Event]]] | None:
        live = [w.last for w in channel.watchers if w.live]
        if not live:
            return None
        after = min(live)
        return after, await self.read(channel.job_id, after)

    def _catch_up(self, channel: Channel,
                  read: tuple[int, tuple[dict[str, Any] | None, list[Event]]] | None) -> bool:
        """Hand each watcher what it misses, then the held live events. False when a gap remains."""
        if read is not None:
            after, (snapshot, events) = read
            first = events[0].seq if events else None
            seq = int(snapshot["seq"]) if snapshot is not None and "seq" in snapshot else None
            for watcher in tuple(channel.watchers):
                if not watcher.live:
                    continue
                if watcher.last < after:  # went live after this read was planned: read again for it
                    channel.recheck = True
                    continue
                if seq is not None and snapshot is not None:
                    trimmed = first is None or first > watcher.last + 1
                    reset = self._went_back(watcher, snapshot, seq)
                    if reset:
                        log.warning("job %s went back from seq %d to %d (Redis lost its data?): sending a snapshot",
                                    channel.job_id, watcher.last, seq)
                        self.metrics.repair_reset.inc()
                    if reset or (watcher.last < seq and trimmed):  # the stream no longer has what it misses
                        self._push_snapshot(watcher, snapshot, seq)
                        if watcher.conn.watchers.get(channel.job_id) is not watcher:
                            continue
                        if reset:
                            continue  # the events read belong to the old history
                for event in events:
                    if not self._offer(watcher, event, live=False) or not watcher.live:
                        break
        held, channel.buffer = channel.buffer, []
        for index, event in enumerate(held):
            gap, suspect = self._fan_out(channel, event)
            if suspect:
                channel.recheck = True
            if gap:
                channel.buffer = held[index:] + channel.buffer
                return False
        return True

    @staticmethod
    def _went_back(watcher: Watcher, snapshot: dict[str, Any], seq: int) -> bool:
        """True when the job's hash is behind what the watcher was sent: Redis lost the job and its seq
        started again (lower, or equal but for another event)."""
        if seq < watcher.last:
            return True
        ts = snapshot_ts(snapshot)
        return seq == watcher.last and watcher.last_ts is not None and ts is not None and ts != watcher.last_ts

    def _push_snapshot(self, watcher: Watcher, snapshot: dict[str, Any], seq: int) -> None:
        """A snapshot frame; the watcher continues after its seq (and is done if the job has ended)."""
        watcher.conn.push_snapshot(watcher, seq, snapshot_frame(watcher.job_id, snapshot))
        watcher.last = seq
        watcher.last_ts = snapshot_ts(snapshot)
        if snapshot.get("status") in TERMINAL:
            self._finished(watcher)


def snapshot_ts(snapshot: dict[str, Any]) -> float | None:
    ts = snapshot.get("ts")
    return ts if isinstance(ts, float) else None
