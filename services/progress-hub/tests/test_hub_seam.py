"""The seam, driven directly: a Hub in this process, a real Redis, and pauses injected where races happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hubtest import Jobs, assert_gap_free, eventually, numsub, until

from longrun_common.events import Progress
from longrun_common.publisher import EventSpec
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_common.tokens import StreamScope
from longrun_hub.frames import Event
from longrun_hub.hub import Hub, Outcome, SeamHook
from longrun_hub.outbox import CONTROL, SNAPSHOT, Connection, Item

pytestmark = pytest.mark.integration

DEV = StreamScope("dev", None)


class Capture(Connection):
    """A connection whose outbox the test reads directly (no socket)."""

    transport = "ws"

    def frames(self) -> list[tuple[str, int]]:
        return [("snapshot" if i.kind == SNAPSHOT else "event", i.seq) for i in self.items if i.kind != CONTROL]

    async def send_item(self, item: Item) -> None:  # pragma: no cover - never drained here
        raise AssertionError


class Sink(Connection):
    """A connection whose sender runs: every frame it sends is kept (a client that reads as fast as it can,
    or `delay` seconds per frame)."""

    transport = "ws"

    def __init__(self, hub: Hub, delay: float = 0.0) -> None:
        super().__init__(hub)
        self.delay = delay
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send_item(self, item: Item) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(json.loads(item.text))

    async def send_close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(settings: Settings) -> AsyncIterator[HubFactory]:
    hubs: list[Hub] = []

    async def make(hook: SeamHook | None = None) -> Hub:
        hub = Hub(settings, seam_hook=hook)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()


async def last_seq(conn: Capture) -> int:
    seqs = [i.seq for i in conn.items if i.kind != CONTROL]
    return seqs[-1] if seqs else -1


async def test_events_during_the_seam_arrive_once_in_order(make_hub: HubFactory, jobs: Jobs) -> None:
    """Events after SUBSCRIBE but before the snapshot read are in the snapshot and also live: sent once.
    Events after the read but before the watcher goes live exist only live: they must not be lost."""
    job = await jobs.create()
    await jobs.progress(job, 1)  # seq 2

    async def hook(stage: str, job_id: str) -> None:
        if stage == "subscribed":
            await jobs.progress(job, 2)  # 3
            await jobs.progress(job, 3)  # 4
        else:
            await jobs.progress(job, 4)  # 5
            await jobs.progress(job, 5)  # 6
        await asyncio.sleep(0.1)  # the listener receives them while the seam is paused

    hub = await make_hub(hook)
    conn = Capture(hub)
    assert await hub.watch(conn, job, None, DEV) is Outcome.LIVE
    await jobs.progress(job, 6)  # 7
    await jobs.finish(job)  # 8
    await eventually(lambda: last_seq(conn), 8)
    assert conn.frames() == [("snapshot", 4), ("event", 5), ("event", 6), ("event", 7), ("event", 8)]
    assert hub.metrics.repair_gap._value.get() == 0  # the seam buffer did it, not a later repair
    assert conn.closing  # terminal event queued, then the close


async def test_resume_during_the_seam(make_hub: HubFactory, jobs: Jobs) -> None:
    job = await jobs.create()
    for i in range(1, 4):
        await jobs.progress(job, i)  # 2..4

    async def hook(stage: str, job_id: str) -> None:
        await jobs.progress(job, 10 if stage == "subscribed" else 20)  # 5 (replayed), then 6 (live only)
        await asyncio.sleep(0.1)

    hub = await make_hub(hook)
    conn = Capture(hub)
    assert await hub.watch(conn, job, 2, DEV) is Outcome.LIVE
    await jobs.finish(job)  # 7
    await eventually(lambda: last_seq(conn), 7)
    assert conn.frames() == [("event", s) for s in range(3, 8)]
    assert hub.metrics.repair_gap._value.get() == 0


async def test_a_lost_live_event_is_repaired_from_the_stream(make_hub: HubFactory, jobs: Jobs) -> None:
    job = await jobs.create()
    hub = await make_hub()
    deliver = hub.on_message

    def lossy(job_id: str, raw: bytes) -> None:  # pub/sub drops seq 3 and 4 (as across a reconnect)
        event = Event.parse(raw)
        if event is None or event.seq not in (3, 4):
            deliver(job_id, raw)

    hub.feed._on_message = lossy
    conn = Capture(hub)
    assert await hub.watch(conn, job, None, DEV) is Outcome.LIVE
    for i in range(1, 6):
        await jobs.progress(job, i)  # 2..6
    await eventually(lambda: last_seq(conn), 6)
    assert conn.frames() == [("snapshot", 1)] + [("event", s) for s in range(2, 7)]
    assert hub.metrics.repair_gap._value.get() >= 1


async def test_a_watcher_whose_events_were_trimmed_gets_a_fresh_snapshot(make_hub: HubFactory, jobs: Jobs) -> None:
    job = await jobs.create()
    hub = await make_hub()
    deliver = hub.on_message
    dropping = True

    def lossy(job_id: str, raw: bytes) -> None:
        if not dropping:
            deliver(job_id, raw)

    hub.feed._on_message = lossy
    conn = Capture(hub)
    assert await hub.watch(conn, job, None, DEV) is Outcome.LIVE
    for i in range(1, 20):
        await jobs.progress(job, i)  # 2..20, all lost
    await jobs.client.xtrim(jobs.keys.stream(job), maxlen=3, approximate=False)  # keeps 18..20
    dropping = False
    await jobs.progress(job, 50)  # 21: a gap of 2..20 that the stream can no longer fill
    await eventually(lambda: last_seq(conn), 21)
    await jobs.progress(job, 60)  # 22
    await eventually(lambda: last_seq(conn), 22)
    assert conn.frames() == [("snapshot", 1), ("snapshot", 21), ("event", 22)]


async def test_the_last_watcher_out_unsubscribes(make_hub: HubFactory, jobs: Jobs) -> None:
    job = await jobs.create()
    hub = await make_hub()
    first, second = Capture(hub), Capture(hub)
    await hub.watch(first, job, None, DEV)
    await hub.watch(second, job, None, DEV)
    assert await numsub(jobs, job) == 1
    hub.release_all(first)
    await asyncio.sleep(0.1)
    assert await numsub(jobs, job) == 1
    hub.release_all(second)
    await eventually(lambda: numsub(jobs, job), 0)
    # Watching again subscribes again (and is confirmed before the snapshot is read).
    third = Capture(hub)
    await hub.watch(third, job, None, DEV)
    assert await numsub(jobs, job) == 1


async def test_unknown_and_foreign_jobs(make_hub: HubFactory, jobs: Jobs) -> None:
    """Another tenant's job looks exactly like a missing one; 4403 is only a job token for another job."""
    hub = await make_hub()
    foreign = await jobs.create(tenant="acme")
    mine = await jobs.create()
    conn = Capture(hub)
    assert await hub.watch(conn, "no-such-job", None, DEV) is Outcome.NOT_FOUND
    assert await hub.watch(conn, foreign, None, DEV) is Outcome.NOT_FOUND
    assert await hub.watch(conn, foreign, None, StreamScope("dev", foreign)) is Outcome.NOT_FOUND
    assert await hub.watch(conn, mine, None, StreamScope("dev", "another-job")) is Outcome.FORBIDDEN
    assert await hub.watch(conn, foreign, None, StreamScope("acme", foreign)) is Outcome.LIVE
    assert not hub.channels.get("no-such-job")


async def test_a_resumed_replay_is_paged_and_never_coalesced(make_hub: HubFactory, jobs: Jobs) -> None:
    """since=0 on a job with 4 queues' worth of history, live events arriving while it replays: the client
    gets 1..N exactly (nothing coalesced, however much is queued), then live events after it."""
    job = await jobs.create()
    for i in range(1, 300):
        await jobs.progress(job, i, total=1000)  # seq 2..300
    hub = await make_hub()
    assert hub.limits.replay_page <= hub.limits.queue_size < 300
    conn = Sink(hub, delay=0.0005)  # slower than the publisher below: the outbox is under pressure
    sender = asyncio.create_task(conn.run())
    try:
        assert await hub.watch(conn, job, 0, DEV) is Outcome.LIVE
        assert len(conn.items) <= hub.limits.replay_page  # the rest of the replay is read as the sender drains
        for i in range(300, 400):
            await jobs.progress(job, i, total=1000)  # 301..400, live, while the replay is sent
        final = await jobs.finish(job)
        await asyncio.wait_for(sender, 20)
    finally:
        sender.cancel()
    frames = [f for f in conn.sent if f["type"] != "snapshot"]
    assert conn.sent[0]["type"] != "snapshot" and conn.closed is not None and conn.closed[0] == 1000
    replayed = [f for f in frames if f["seq"] <= 300]
    assert_gap_free([f["seq"] for f in replayed], 1, 300)
    assert not any("coalesced" in f for f in replayed)
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[-1] == final  # live ones may be coalesced, never lost or repeated
    assert sum(1 + f.get("coalesced", 0) for f in frames) == final
    assert conn.replay_queued == 0 and not conn.replays


async def test_a_job_whose_redis_data_was_lost_starts_again_with_a_snapshot(make_hub: HubFactory,
                                                                             jobs: Jobs) -> None:
    """Redis loses the job (FLUSHALL, restart without persistence) and a worker's next event recreates the
    hash with a lower seq, or the same seq for another event: watchers get a fresh snapshot and continue from
    it. The recreated hash has no tenant: only a job token for exactly this job opens it meanwhile."""
    job = await jobs.create()
    for i in range(1, 6):
        await jobs.progress(job, i)  # 2..6
    hub = await make_hub()
    conn = Capture(hub)
    assert await hub.watch(conn, job, None, DEV) is Outcome.LIVE
    await jobs.progress(job, 6)  # 7
    await eventually(lambda: last_seq(conn), 7)

    async def lose_and_publish(current: int, seq_floor: int) -> int:
        await jobs.client.delete(jobs.keys.job(job), jobs.keys.stream(job))
        spec = EventSpec(job, "progress", JobStatus.RUNNING, 1, progress=Progress(current=current, total=100),
                         seq_floor=seq_floor)
        return (await jobs.publisher.apublish(jobs.client, spec)).seq

    assert await lose_and_publish(50, seq_floor=0) == 1  # seq starts again from 1
    await until(lambda: ("snapshot", 1) in conn.frames(), within=5)
    await jobs.progress(job, 51)  # 2
    await eventually(lambda: last_seq(conn), 2)
    assert conn.frames() == [("snapshot", 6), ("event", 7), ("snapshot", 1), ("event", 2)]
    snapshot = json.loads(next(i.text for i in conn.items if i.kind == SNAPSHOT and i.seq == 1))
    assert snapshot["job"]["progress"]["current"] == 50.0 and snapshot["job"]["tenant"] is None
    assert hub.metrics.repair_reset._value.get() == 1

    assert await lose_and_publish(60, seq_floor=1) == 2  # the same seq as the watcher's last, another event
    await until(lambda: conn.frames()[-1] == ("snapshot", 2), within=5)
    await jobs.progress(job, 61)  # 3
    await eventually(lambda: last_seq(conn), 3)
    assert conn.frames()[4:] == [("snapshot", 2), ("event", 3)]

    # Until the reconciler restores the hash's tenant, a tenant token cannot prove the job is its own.
    # (The gateway mints a job token only after checking the job is the tenant's, so that one may.)
    assert await hub.watch(Capture(hub), job, None, DEV) is Outcome.NOT_FOUND
    assert await hub.watch(Capture(hub), job, None, StreamScope("dev", "another-job")) is Outcome.NOT_FOUND
    assert await hub.watch(Capture(hub), job, None, StreamScope("dev", job)) is Outcome.LIVE
