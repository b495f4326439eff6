"""The seam, driven directly: a Hub in this process, a real Redis, and pauses injected where races happen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hubtest import Jobs, eventually, numsub

from longrun_common.settings import Settings
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
    hub = await make_hub()
    foreign = await jobs.create(tenant="acme")
    conn = Capture(hub)
    assert await hub.watch(conn, "no-such-job", None, DEV) is Outcome.NOT_FOUND
    assert await hub.watch(conn, foreign, None, DEV) is Outcome.FORBIDDEN
    assert await hub.watch(conn, foreign, None, StreamScope("acme", foreign)) is Outcome.LIVE
    assert not hub.channels.get("no-such-job")
