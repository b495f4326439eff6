"""SSE, health, readiness, metrics and the browser module, against the shared hub process."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hubtest import SharedHub, assert_gap_free

pytestmark = pytest.mark.integration


async def sse(url: str, **kwargs: Any) -> tuple[int, list[dict[str, Any]], list[str]]:
    """Status, data frames and `id:` lines of a whole SSE response."""
    frames: list[dict[str, Any]] = []
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=20) as http, http.stream("GET", url, **kwargs) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
            elif line.startswith("id: "):
                ids.append(line[4:])
        return response.status_code, frames, ids


async def test_sse_snapshot_events_and_end(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    for i in range(1, 4):
        await jobs.progress(job, i)
    await jobs.finish(job)
    status, frames, ids = await sse(f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job)})
    assert status == 200 and [f["type"] for f in frames] == ["snapshot"] and ids == ["5"]
    # Last-Event-ID resumes exactly after it (what EventSource sends when it reconnects by itself).
    status, frames, ids = await sse(f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job)},
                                    headers={"Last-Event-ID": "2"})
    assert_gap_free([f["seq"] for f in frames], 3, 5)
    assert ids == ["3", "4", "5"] and frames[-1]["status"] == "succeeded"
    # ... and wins over ?since (the URL EventSource reconnects to keeps its original query).
    _, frames, _ = await sse(f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job), "since": "1"},
                             headers={"Last-Event-ID": "4"})
    assert [f["seq"] for f in frames] == [5]
    # Resuming a finished job at its end: 204 tells EventSource to stop reconnecting.
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job)},
                                  headers={"Last-Event-ID": "5"})
    assert response.status_code == 204


async def test_sse_resume_replays_the_whole_history_without_coalescing(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    for i in range(1, 150):
        await jobs.progress(job, i, total=150)  # seq 2..150, more than a client's queue (64)
    final = await jobs.finish(job)
    status, frames, ids = await sse(f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job)},
                                    headers={"Last-Event-ID": "0"})
    assert status == 200 and ids == [str(seq) for seq in range(1, final + 1)]
    assert_gap_free([f["seq"] for f in frames], 1, final)
    assert not any("coalesced" in f for f in frames)


async def test_sse_live(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    async with httpx.AsyncClient(timeout=20) as http, http.stream(
        "GET", f"{hub.url}/v1/jobs/{job}/events", headers={"Authorization": f"Bearer {jobs.token(None)}"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["access-control-allow-origin"] == "*"
        frames: list[dict[str, Any]] = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
                if len(frames) == 1:
                    for i in range(1, 6):
                        await jobs.progress(job, i)
                    await jobs.finish(job)
    assert frames[0]["type"] == "snapshot"
    assert_gap_free([f["seq"] for f in frames[1:]], 2, 7)


async def test_sse_errors(hub: SharedHub) -> None:
    jobs = hub.jobs
    job, foreign = await jobs.create(), await jobs.create(tenant="acme")
    cases = [
        (job, {}, {}, 401),
        (job, {"token": "garbage"}, {}, 401),
        (job, {"token": jobs.token(job, ttl=-60)}, {}, 401),
        (job, {"token": jobs.token(foreign)}, {}, 403),  # a token for another job
        (foreign, {"token": jobs.token(None)}, {}, 404),  # another tenant's job: as if it did not exist
        (foreign, {"token": jobs.token(foreign)}, {}, 404),
        ("missing", {"token": jobs.token(None)}, {}, 404),
        (job, {"token": jobs.token(job), "since": "-1"}, {}, 422),
        (job, {"token": jobs.token(job)}, {"Last-Event-ID": "abc"}, 422),
        (job, {"token": jobs.token(job)}, {"Last-Event-ID": str(2**63)}, 422),  # not 503 (retried forever)
    ]
    async with httpx.AsyncClient() as http:
        for target, params, headers, expected in cases:
            response = await http.get(f"{hub.url}/v1/jobs/{target}/events", params=params, headers=headers)
            assert response.status_code == expected, (target, params, headers, response.text)
            body = response.json()["error"]
            assert set(body) == {"code", "message", "details"} and body["message"]


async def test_health_ready_metrics_and_client_module(hub: SharedHub) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(hub.url + "/healthz")).json() == {"status": "ok"}
        ready = await http.get(hub.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["pubsub"] is True
        text = (await http.get(hub.url + "/metrics")).text
        for name in ("longrun_hub_connections", "longrun_hub_subscriptions", "longrun_hub_events_delivered_total",
                     "longrun_hub_events_coalesced_total", "longrun_hub_events_replayed_total",
                     "longrun_hub_delivery_lag_seconds_bucket", "longrun_hub_redis_reconnects_total"):
            assert name in text
        js = await http.get(hub.url + "/v1/client.js")
        assert js.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert js.headers["access-control-allow-origin"] == "*"
        assert "export function watchJob" in js.text and "export function connectHub" in js.text
        preflight = await http.options(f"{hub.url}/v1/jobs/x/events", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,last-event-id"})
        assert preflight.status_code == 200


async def test_delivery_lag_is_measured(hub: SharedHub) -> None:
    jobs = hub.jobs
    job = await jobs.create()
    async with httpx.AsyncClient() as http:
        before = _lag_count((await http.get(hub.url + "/metrics")).text)
        async with http.stream("GET", f"{hub.url}/v1/jobs/{job}/events", params={"token": jobs.token(job)}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"snapshot"' in line:
                    await jobs.progress(job, 1)
                    await jobs.finish(job)
        after = _lag_count((await http.get(hub.url + "/metrics")).text)
    assert after - before == 2


def _lag_count(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("longrun_hub_delivery_lag_seconds_count"))
