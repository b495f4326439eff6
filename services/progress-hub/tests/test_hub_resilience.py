"""Hub restarts, Redis restarts, lost pub/sub connections, several hubs, connection lifetime, keepalive."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from hubtest import Jobs, Received, assert_gap_free, numsub, read_until_closed, until, ws_url

from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.processes import Service
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


async def metric(service: Service, name: str) -> float:
    """Sum of a metric's samples on the service's /metrics."""
    total = 0.0
    async with httpx.AsyncClient() as http:
        text = (await http.get(service.url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def steady_publisher(jobs: Jobs, job: str, count: int, interval: float) -> int:
    """Publish `count` progress events then the terminal one; returns the final seq."""
    for i in range(count):
        await jobs.progress(job, i, total=count)
        await asyncio.sleep(interval)
    return await jobs.finish(job)


async def follow(url_for: Any, job: str, token: str, received: Received, hint: list[dict[str, Any]]) -> None:
    """A client that, like client.js, resumes with its last seq on whichever hub `url_for()` names."""
    while True:
        since = received.seqs[-1] if received.seqs else None
        async with websockets.connect(ws_url(url_for(), f"/v1/ws/jobs/{job}", token=token, since=since)) as ws:
            try:
                async for message in ws:
                    frame = json.loads(message)
                    if frame["type"] == "reconnect":
                        hint.append(frame)
                    else:
                        received.frames.append(frame)
            except websockets.ConnectionClosed:
                pass
            received.code = ws.close_code
        if received.code == 1000:
            return
        await asyncio.sleep(0.05)


async def test_graceful_hub_restart_mid_job(services: ServiceFactory, jobs: Jobs) -> None:
    """SIGTERM: the client gets a reconnect frame with its last seq, close 1012, and resumes on another hub
    while events keep being published: no gap, no duplicate."""
    first, second = services("hub", wait=False), services("hub", wait=False)
    wait_ready(first, second)  # booted side by side
    job = await jobs.create()
    current = [first]
    received, hints = Received(), []
    client = asyncio.create_task(follow(lambda: current[0].url, job, jobs.token(job), received, hints))
    publisher = asyncio.create_task(steady_publisher(jobs, job, 120, 0.02))
    await until(lambda: len(received.seqs) >= 20)
    current[0] = second
    await asyncio.to_thread(first.stop)
    final = await publisher
    await asyncio.wait_for(client, 20)
    assert received.frames[0]["type"] == "snapshot"
    assert_gap_free(received.seqs, received.frames[0]["seq"] + 1, final)
    assert len(hints) == 1 and hints[0]["reason"] == "shutdown"
    assert isinstance(hints[0]["since"], int) and hints[0]["since"] in received.seqs


async def test_killed_hub_mid_job(services: ServiceFactory, jobs: Jobs) -> None:
    """SIGKILL: no goodbye at all; the client resumes from its own last seq on another hub."""
    first, second = services("hub", wait=False), services("hub", wait=False)
    wait_ready(first, second)  # booted side by side
    job = await jobs.create()
    current = [first]
    received, hints = Received(), []
    client = asyncio.create_task(follow(lambda: current[0].url, job, jobs.token(job), received, hints))
    publisher = asyncio.create_task(steady_publisher(jobs, job, 100, 0.02))
    await until(lambda: len(received.seqs) >= 20)
    current[0] = second
    first.signal_group(signal.SIGKILL)
    final = await publisher
    await asyncio.wait_for(client, 20)
    assert_gap_free(received.seqs, received.frames[0]["seq"] + 1, final)
    assert hints == []


async def test_two_hubs_serve_the_same_job(services: ServiceFactory, jobs: Jobs) -> None:
    hubs = [services("hub", wait=False), services("hub", wait=False)]
    wait_ready(*hubs)  # booted side by side
    job = await jobs.create()
    token = jobs.token(job)
    sockets = [await websockets.connect(ws_url(h.url, f"/v1/ws/jobs/{job}", token=token)) for h in hubs * 5]
    for ws in sockets:
        assert json.loads(await ws.recv())["type"] == "snapshot"
    assert await numsub(jobs, job) == 2  # one subscription per hub process, however many clients
    final = await steady_publisher(jobs, job, 30, 0.005)
    for ws in sockets:
        received = await read_until_closed(ws)
        assert_gap_free(received.seqs, 2, final)


async def test_lost_pubsub_connection_is_repaired_from_the_stream(services: ServiceFactory, jobs: Jobs) -> None:
    """The hub's pub/sub connection is killed and events are published before it can come back."""
    hub = services("hub", env={"LONGRUN_HUB_REDIS_BACKOFF_MIN": "0.6", "LONGRUN_HUB_REDIS_BACKOFF_MAX": "0.6"})
    job = await jobs.create()
    async with websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job))) as ws:
        assert json.loads(await ws.recv())["seq"] == 1
        await jobs.progress(job, 1)
        assert json.loads(await ws.recv())["seq"] == 2
        killed = await jobs.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        for i in range(2, 8):
            await jobs.progress(job, i)  # 3..8 while the hub's listener is down (it waits >= 0.3 s)
        received = Received()
        async with asyncio.timeout(10):
            while len(received.seqs) < 6:
                received.frames.append(json.loads(await ws.recv()))
        assert_gap_free(received.seqs, 3, 8)
        final = await jobs.finish(job)
        received = await read_until_closed(ws)
        assert_gap_free(received.seqs, final, final)
    assert await metric(hub, "longrun_hub_redis_reconnects_total") >= 1
    assert await metric(hub, "longrun_hub_events_replayed_total") >= 6


async def test_redis_restart_while_clients_are_connected(services: ServiceFactory, settings: Settings) -> None:
    """Redis goes away and comes back (its data reloaded); events published before the hub's listener
    reconnects reach every WebSocket, multiplexed and SSE client, in order, once."""
    server = RedisServer().start()
    try:
        env = {"LONGRUN_REDIS_URL": server.url, "LONGRUN_HUB_REDIS_BACKOFF_MIN": "0.5",
               "LONGRUN_HUB_REDIS_BACKOFF_MAX": "0.5"}
        hub = services("hub", env=env)
        own = settings.model_copy(update={"redis_url": server.url})
        client = aioredis.Redis.from_url(server.url)
        jobs = Jobs(client, own)
        job = await jobs.create()
        for i in range(1, 5):
            await jobs.progress(job, i)  # 2..5
        single = await websockets.connect(ws_url(hub.url, f"/v1/ws/jobs/{job}", token=jobs.token(job)))
        mux = await websockets.connect(ws_url(hub.url, "/v1/ws", token=jobs.token(None)))
        await mux.send(json.dumps({"op": "subscribe", "job_id": job}))
        assert json.loads(await single.recv())["seq"] == 5
        assert json.loads(await mux.recv())["seq"] == 5
        async with httpx.AsyncClient(timeout=30) as http:
            sse_url = f"{hub.url}/v1/jobs/{job}/events?token={jobs.token(job)}"
            async with http.stream("GET", sse_url) as sse:
                lines = sse.aiter_lines()
                await client.save()  # what the restarted server reloads
                await client.aclose()
                server.stop()
                assert (await http.get(hub.url + "/readyz")).status_code == 503
                server.start()
                client = aioredis.Redis.from_url(server.url)
                jobs = Jobs(client, own)
                for i in range(5, 10):
                    await jobs.progress(job, i)  # 6..10, likely before the hub is back
                final = await jobs.finish(job)  # 11
                sse_frames = [json.loads(line[6:]) async for line in lines if line.startswith("data: ")]
        for ws in (single, mux):
            received = await read_until_closed(ws) if ws is single else await _read_n(ws, 6)
            assert_gap_free(received.seqs, 6, final)
        sse_seqs = [f["seq"] for f in sse_frames if f["type"] != "snapshot"]
        assert sse_frames[0]["type"] == "snapshot"
        assert_gap_free(sse_seqs, 6, final)
        assert await metric(hub, "longrun_hub_redis_reconnects_total") >= 1
        assert await metric(hub, "longrun_hub_events_replayed_total") >= 3 * 6  # all three clients repaired
        async with httpx.AsyncClient() as http:
            assert (await http.get(hub.url + "/readyz")).status_code == 200
        await mux.close()
        await client.aclose()
    finally:
        server.stop()


async def _read_n(ws: websockets.ClientConnection, count: int) -> Received:
    received = Received()
    async with asyncio.timeout(15):
        while len(received.frames) < count:
            received.frames.append(json.loads(await ws.recv()))
    return received


async def test_max_connection_lifetime_hands_over_without_loss(services: ServiceFactory, jobs: Jobs) -> None:
    hub = services("hub", env={"LONGRUN_HUB_MAX_CONNECTION_SECONDS": "0.7"})
    job = await jobs.create()
    received, hints = Received(), []
    client = asyncio.create_task(follow(lambda: hub.url, job, jobs.token(job), received, hints))
    final = await steady_publisher(jobs, job, 100, 0.025)  # ~2.5 s: several lifetimes
    await asyncio.wait_for(client, 20)
    assert len(hints) >= 2 and {h["reason"] for h in hints} == {"max_lifetime"}
    assert_gap_free(received.seqs, received.frames[0]["seq"] + 1, final)


async def test_multiplexed_reconnect_frame_names_each_job(services: ServiceFactory, jobs: Jobs) -> None:
    """...and SSE is not rotated at all: EventSource would reconnect with the same token, whose lifetime is
    the same as the connection's, and a 401 ends an EventSource for good."""
    hub = services("hub", env={"LONGRUN_HUB_MAX_CONNECTION_SECONDS": "0.5"})
    a, b = await jobs.create(), await jobs.create()
    await jobs.progress(b, 1)
    async with httpx.AsyncClient(timeout=10) as http, http.stream(
        "GET", f"{hub.url}/v1/jobs/{b}/events", params={"token": jobs.token(b)}
    ) as sse:
        lines = sse.aiter_lines()
        async with websockets.connect(ws_url(hub.url, "/v1/ws", token=jobs.token(None))) as ws:
            await ws.send(json.dumps({"op": "subscribe", "job_id": a}))
            await ws.send(json.dumps({"op": "subscribe", "job_id": b}))
            received = await read_until_closed(ws)
        assert received.frames[-1] == {"type": "reconnect", "reason": "max_lifetime", "since": {a: 1, b: 2}}
        assert received.code == 1012
        await asyncio.sleep(0.2)  # the SSE stream is now older than 1.1 x the maximum lifetime
        final = await jobs.finish(b)
        sse_frames = [json.loads(line[6:]) async for line in lines if line.startswith("data: ")]
    assert [(f["type"], f["seq"]) for f in sse_frames] == [("snapshot", 2), ("status", final)]


async def test_keepalive_pings(services: ServiceFactory, jobs: Jobs) -> None:
    """The hub pings an idle WebSocket (protocol ping) and sends SSE comments on an idle stream."""
    hub = services("hub", env={"LONGRUN_HUB_PING_INTERVAL": "0.3"})
    job = await jobs.create()
    token = jobs.token(job)
    assert hub.port is not None
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /v1/ws/jobs/{job}?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                     .encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        opcodes = []
        while 0x9 not in opcodes:  # 0x9 = ping; the snapshot (0x1, text) comes first
            while len(rest) < 2:
                rest += sock.recv(65536)
            length = rest[1] & 0x7F
            header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            while len(rest) < header:
                rest += sock.recv(65536)
            if length >= 126:
                length = int.from_bytes(rest[2:header], "big")
            while len(rest) < header + length:
                rest += sock.recv(65536)
            opcodes.append(rest[0] & 0x0F)
            rest = rest[header + length:]
        assert opcodes[0] == 0x1
    async with httpx.AsyncClient(timeout=10) as http, http.stream(
        "GET", f"{hub.url}/v1/jobs/{job}/events", params={"token": token}
    ) as response:
        seen = []
        async for line in response.aiter_lines():
            seen.append(line)
            if line == ": ping":
                break
        assert any(line.startswith("data: ") for line in seen)
