"""Slow clients: progress is coalesced, status changes and the terminal event are never dropped, and a client
that stops reading is closed with 1013 and resumes with `since`."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from hubtest import Jobs, Received, assert_gap_free, read_until_closed, ws_url

from longrun_common.states import JobStatus
from tests.support.fixtures import ServiceFactory

pytestmark = pytest.mark.integration

BIG = "x" * 60_000  # big frames fill the socket buffers after a few dozen events
TIGHT = {"LONGRUN_HUB_QUEUE_SIZE": "4", "LONGRUN_HUB_QUEUE_LIMIT": "64", "LONGRUN_HUB_SEND_TIMEOUT": "2"}


async def flood(jobs: Jobs, job: str, count: int) -> int:
    """`count` big progress events, a status change in the middle, then the terminal event."""
    for i in range(count):
        await jobs.progress(job, i, total=count, message=BIG)
        if i == count // 2:
            await jobs.start(job)  # a status change: must arrive however slow the client is
    return await jobs.finish(job, JobStatus.SUCCEEDED)


async def test_slow_reader_gets_coalesced_progress_and_every_status(services: ServiceFactory, jobs: Jobs) -> None:
    hub = services("hub", env=TIGHT)
    job = await jobs.create()
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job)),
                                  max_queue=1, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        final = await flood(jobs, job, 300)  # published while the client is not reading
        await asyncio.sleep(1.0)
        received = Received()
        async with asyncio.timeout(30):
            async for message in ws:
                received.frames.append(json.loads(message))
                await asyncio.sleep(0.002)
        received.code = ws.close_code
    seqs = received.seqs
    assert received.code == 1000
    assert seqs == sorted(set(seqs)) and seqs[-1] == final
    statuses = [f for f in received.frames if f["type"] == "status"]
    assert [f["status"] for f in statuses] == ["running", "succeeded"]
    coalesced = [f for f in received.frames if f.get("coalesced")]
    assert coalesced, "a client this slow should have had progress coalesced"
    assert all(f["type"] == "progress" for f in coalesced)
    # Every event is accounted for: each frame stands for itself plus the `coalesced` ones it replaced.
    assert sum(1 + f.get("coalesced", 0) for f in received.frames) == final - 1
    assert len(received.frames) < final - 1


async def test_client_that_stops_reading_is_closed_1013_and_resumes(services: ServiceFactory, jobs: Jobs) -> None:
    hub = services("hub", env=TIGHT)
    jobs_ = [await jobs.create() for _ in range(100)]
    token = jobs.token(None)
    received = Received()
    async with websockets.connect(ws_url(hub.url, "/v1/ws", token=token), max_queue=1, max_size=None) as ws:
        for job in jobs_:
            await ws.send(json.dumps({"op": "subscribe", "job_id": job}))
        # Status events of 100 jobs cannot be coalesced: the queue passes its limit while nobody reads.
        for job in jobs_:
            await jobs.start(job)
            await jobs.progress(job, 1, message=BIG)
        await asyncio.sleep(3.0)
        await read_until_closed(ws, received)
    assert received.code == 1013
    last = {job: max((f["seq"] for f in received.of(job)), default=0) for job in jobs_}
    async with websockets.connect(ws_url(hub.url, "/v1/ws", token=token), max_size=None) as ws:
        for job in jobs_:
            await ws.send(json.dumps({"op": "subscribe", "job_id": job, "since": last[job]}))
        for job in jobs_:
            await jobs.finish(job)
        async with asyncio.timeout(20):
            while not all(any(f.get("status") == "succeeded" for f in received.of(j)) for j in jobs_):
                received.frames.append(json.loads(await ws.recv()))
    for job in jobs_:
        frames = received.of(job)  # both connections: what came before the 1013, then the resume
        start = frames[0]["seq"] + 1 if frames[0]["type"] == "snapshot" else 1
        assert_gap_free([f["seq"] for f in frames if f["type"] != "snapshot"], start, 4)
