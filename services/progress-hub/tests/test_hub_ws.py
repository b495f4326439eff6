"""The single-job and multiplexed WebSockets against a real hub process and a real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from hubtest import Jobs, Received, SharedHub, assert_gap_free, close_of, eventually, numsub, read_until_closed, ws_url

from tests.support.fixtures import ServiceFactory

pytestmark = pytest.mark.integration


async def test_snapshot_then_every_event_then_1000(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    await jobs.start(job)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job))) as ws:
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and snapshot["seq"] == 2
        assert snapshot["job"]["id"] == job and snapshot["job"]["status"] == "running"
        assert snapshot["job"]["tenant"] == "dev" and snapshot["job"]["task"] == "demo.steps"
        for i in range(1, 11):
            await jobs.progress(job, i * 10, message=f"step {i}")
        await jobs.finish(job)
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, 3, 13)
    assert received.frames[0]["progress"] == {"current": 10.0, "total": 100.0, "percent": 10.0, "message": "step 1"}
    assert received.frames[-1]["status"] == "succeeded" and received.frames[-1]["result"] == {"ok": True}
    assert all(f["job_id"] == job and "ts" in f and f["attempt"] == 1 for f in received.frames)
    assert received.code == 1000


async def test_resume_with_since_replays_exactly_the_rest(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    for i in range(1, 8):
        await jobs.progress(job, i)  # seq 2..8
    url = ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=4)
    async with websockets.connect(url) as ws:
        first = [json.loads(await ws.recv()) for _ in range(4)]
        assert [f["seq"] for f in first] == [5, 6, 7, 8]
        assert all(f["type"] == "progress" for f in first)
        await jobs.progress(job, 9)
        await jobs.finish(job)
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, 9, 10)
    assert received.code == 1000


async def test_since_equal_to_current_seq_sends_only_new_events(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    seq = await jobs.progress(job, 1)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=seq)) as ws:
        await asyncio.sleep(0.2)
        await jobs.finish(job)
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, seq + 1, seq + 1)


async def test_resume_replays_the_whole_history_without_coalescing(hub: SharedHub) -> None:
    """since=0 on a job with more history than a client's queue (64 frames): every event, none coalesced
    (a fast client must get N+1… whole, not the newest of a burst)."""
    jobs = hub.jobs
    job = await jobs.create()
    for i in range(1, 150):
        await jobs.progress(job, i, total=150)  # seq 2..150
    final = await jobs.finish(job)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=0)) as ws:
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, 1, final)
    assert not any("coalesced" in f for f in received.frames) and received.code == 1000


async def test_stream_tokens_never_reach_the_log(hub: SharedHub) -> None:
    """uvicorn logs each WebSocket request line ("WebSocket /v1/ws/jobs/…?token=…" [accepted])."""
    jobs = hub.jobs
    job = await jobs.create()
    token = jobs.token(job)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=token)) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
    await close_of(ws_url(hub.url, "/v1/ws", token=token + "x"))  # a rejected one is logged too
    logs = hub.service.logs()
    assert f"/v1/ws/jobs/{job}?token=[redacted]" in logs
    assert token not in logs and token.split(".")[2] not in logs


async def test_since_older_than_the_stream_gets_a_snapshot_first(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    for i in range(1, 30):
        await jobs.progress(job, i)  # seq 2..30
    await jobs.client.xtrim(jobs.keys.stream(job), maxlen=5, approximate=False)  # keeps 26..30
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=3)) as ws:
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and snapshot["seq"] == 30
        await jobs.finish(job)
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, 31, 31)


async def test_since_beyond_the_current_seq_gets_a_snapshot(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    await jobs.progress(job, 1)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=99)) as ws:
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and snapshot["seq"] == 2
        await jobs.finish(job)
        received = await read_until_closed(ws)
    assert_gap_free(received.seqs, 3, 3)


async def test_finished_job(hub: SharedHub) -> None:
    """A finished job: snapshot then 1000; resuming at its last seq closes 1000 at once with nothing sent."""
    jobs = hub.jobs
    job = await jobs.create()
    last = await jobs.finish(job)
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job))) as ws:
        received = await read_until_closed(ws)
    assert [f["type"] for f in received.frames] == ["snapshot"]
    assert received.frames[0]["job"]["status"] == "succeeded" and received.code == 1000
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job), since=last)) as ws:
        received = await read_until_closed(ws)
    assert received.frames == [] and received.code == 1000


async def test_close_codes(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    other = await jobs.create()
    foreign = await jobs.create(tenant="acme")
    path = f"/v1/ws/jobs/{job}"
    # 4401: missing, malformed, badly signed, expired
    assert (await close_of(ws_url(hub.url, path)))[0] == 4401
    assert (await close_of(ws_url(hub.url, path, token="nonsense")))[0] == 4401
    forged = Jobs(jobs.client, jobs.settings.model_copy(update={"token_secret": "x" * 40})).token(job)
    assert (await close_of(ws_url(hub.url, path, token=forged)))[0] == 4401
    code, reason = await close_of(ws_url(hub.url, path, token=jobs.token(job, ttl=-60)))
    assert code == 4401 and "expired" in reason
    # 4403: a token for another job
    assert (await close_of(ws_url(hub.url, path, token=jobs.token(other))))[0] == 4403
    # 4404: unknown job, ids that could never be one, and another tenant's job (whether it exists is not
    # revealed: the same answer as for a missing job)
    assert (await close_of(ws_url(hub.url, "/v1/ws/jobs/nope", token=jobs.token(None))))[0] == 4404
    assert (await close_of(ws_url(hub.url, "/v1/ws/jobs/a:b", token=jobs.token(None))))[0] == 4404
    assert (await close_of(ws_url(hub.url, path, token=jobs.token(None, tenant="acme"))))[0] == 4404
    assert (await close_of(ws_url(hub.url, f"/v1/ws/jobs/{foreign}", token=jobs.token(None))))[0] == 4404
    assert (await close_of(ws_url(hub.url, f"/v1/ws/jobs/{foreign}", token=jobs.token(foreign))))[0] == 4404
    # 1008: a bad since (also one no seq can reach: not "Redis unavailable", which clients retry forever)
    for bad in ("-1", "abc", "1.5", str(2**63), str(10**30)):
        code, reason = await close_of(ws_url(hub.url, path, token=jobs.token(job), since=bad))
        assert code == 1008 and "since" in reason
    async with websockets.connect(ws_url(hub.url, path, token=jobs.token(job), since=2**63 - 1)) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"  # beyond the current seq: a snapshot
    # The tenant token opens the tenant's job, also as an Authorization header.
    async with websockets.connect(ws_url(hub.url, path),
                                  additional_headers={"Authorization": f"Bearer {jobs.token(None)}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"


async def test_multiplexed_socket(hub: SharedHub) -> None:
    jobs = hub.jobs
    a, b = await jobs.create(), await jobs.create()
    foreign = await jobs.create(tenant="acme")
    for i in range(1, 4):
        await jobs.progress(a, i)  # a: seq 2..4
    async with websockets.connect(ws_url(hub.url, "/v1/ws", token=jobs.token(None))) as ws:
        await ws.send(json.dumps({"op": "subscribe", "job_id": a, "since": 2}))
        await ws.send(json.dumps({"op": "subscribe", "job_id": b}))
        await ws.send(json.dumps({"op": "subscribe", "job_id": foreign}))
        await ws.send(json.dumps({"op": "subscribe", "job_id": "missing"}))
        got = [json.loads(await ws.recv()) for _ in range(5)]
        assert [(f["job_id"], f["type"], f.get("seq")) for f in got[:3]] == [
            (a, "progress", 3), (a, "progress", 4), (b, "snapshot", 1)]
        assert {(f["job_id"], f["type"], f["code"]) for f in got[3:]} == {
            (foreign, "error", 4404), ("missing", "error", 4404)}
        await jobs.progress(b, 1)
        frame = json.loads(await ws.recv())
        assert (frame["job_id"], frame["seq"]) == (b, 2)
        await ws.send(json.dumps({"op": "unsubscribe", "job_id": b}))
        await asyncio.sleep(0.2)
        await jobs.progress(b, 2)
        await jobs.progress(a, 9)
        await jobs.finish(a)
        frames = [json.loads(await ws.recv()) for _ in range(2)]
        assert [(f["job_id"], f["seq"]) for f in frames] == [(a, 5), (a, 6)]  # nothing more of b
        await jobs.progress(b, 3)
        # a finished: it is dropped; the socket stays open for more subscriptions.
        await ws.send(json.dumps({"op": "subscribe", "job_id": b, "since": 3}))
        frame = json.loads(await ws.recv())
        assert (frame["job_id"], frame["seq"]) == (b, 4)
        # Resuming a job that had ended exactly there: an end frame (the client would otherwise wait forever).
        await ws.send(json.dumps({"op": "subscribe", "job_id": a, "since": 6}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "end", "job_id": a, "seq": 6}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        (b"\x00binary", "JSON text"),
        ("[1, 2]", "object"),
        ('{"op": "dance", "job_id": "x"}', "unknown op"),
        ('{"op": "subscribe"}', "job_id"),
        ('{"op": "subscribe", "job_id": "x", "since": -3}', "since"),
        ('{"op": "subscribe", "job_id": "x", "since": "soon"}', "since"),
        (json.dumps({"op": "subscribe", "job_id": "x", "since": 2**63}), "since"),
    ],
)
async def test_multiplexed_bad_frames_close_1008(hub: SharedHub, frame: str | bytes,
                                                 reason: str) -> None:
    jobs = hub.jobs
    code, why = await close_of(ws_url(hub.url, "/v1/ws", token=jobs.token(None)), send=frame)
    assert code == 1008 and reason in why


async def test_job_token_on_the_multiplexed_socket_opens_only_its_job(hub: SharedHub) -> None:
    jobs = hub.jobs
    mine, other = await jobs.create(), await jobs.create()
    async with websockets.connect(ws_url(hub.url, "/v1/ws", token=jobs.token(mine))) as ws:
        await ws.send(json.dumps({"op": "subscribe", "job_id": other}))
        assert json.loads(await ws.recv())["code"] == 4403
        await ws.send(json.dumps({"op": "subscribe", "job_id": mine}))
        assert json.loads(await ws.recv())["type"] == "snapshot"
    code, _ = await close_of(ws_url(hub.url, "/v1/ws", token="bad"))
    assert code == 4401


async def test_thousand_clients_on_one_job_all_get_every_event(services: ServiceFactory, jobs: Jobs) -> None:
    """1,000 sockets, events published while they connect: each sees snapshot + every later event once.

    The queue bound is raised so that a client this test process cannot read fast enough (1,000 sockets in
    one Python loop) is not coalesced: here every event must arrive, not the latest of a burst."""
    # Pattern subscriptions are counted server-wide; other tenants of this Redis (a Celery worker's control
    # channel) may hold some, so the hub's share is the difference.
    patterns_before = await jobs.client.execute_command("PUBSUB", "NUMPAT")
    hub = services("hub", env={"LONGRUN_HUB_QUEUE_SIZE": "5000", "LONGRUN_HUB_QUEUE_LIMIT": "10000"})
    job = await jobs.create()
    token = jobs.token(job)
    url = ws_url(hub.url, f"/v1/ws/jobs/{job}", token=token)
    results: list[Received] = []
    subscribers: list[int] = []
    connected = 0

    async def client() -> None:
        nonlocal connected
        async with websockets.connect(url, open_timeout=60, ping_interval=None) as ws:
            received = Received()
            received.frames.append(json.loads(await ws.recv()))
            connected += 1
            results.append(await read_until_closed(ws, received, within=90))

    async def publisher() -> None:
        i = 0
        while connected < 1000:  # events keep coming while clients join: every seam is raced
            i += 1
            await jobs.progress(job, i % 100)
            await asyncio.sleep(0.03)
        subscribers.append((await jobs.client.pubsub_numsub(jobs.keys.channel(job)))[0][1])
        for _ in range(20):
            i += 1
            await jobs.progress(job, i % 100)
            await asyncio.sleep(0.02)
        await jobs.finish(job)

    clients = [asyncio.create_task(client()) for _ in range(1000)]
    await asyncio.gather(publisher(), *clients)
    final = int(await jobs.client.hget(jobs.keys.job(job), "seq"))
    assert len(results) == 1000
    for received in results:
        snapshot = received.frames[0]
        assert snapshot["type"] == "snapshot"
        assert_gap_free(received.seqs, snapshot["seq"] + 1, final)
        assert received.code == 1000
    # One subscription served them all (no pattern subscription), and it is gone now that nobody watches.
    assert subscribers == [1]
    assert await jobs.client.execute_command("PUBSUB", "NUMPAT") == patterns_before
    await eventually(lambda: numsub(jobs, job), 0)
