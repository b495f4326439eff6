"""Workflows end to end: chain, group, chord and nested shapes through the gateway and a real worker process, the
parent's roll-up stream over SSE (hub process) and long-poll; failure policies, cancel cascade, requeue-resume."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_support import DEV, serve
from workflow_support import TERMINAL, collect, final, follow, kids, steps, submit_flow

from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import close_store, events, make_store

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http(services: ServiceFactory, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A real worker (it registers the catalog), then an in-process gateway."""
    services("worker", "--concurrency", "4")
    async with serve(create_app(settings)) as client:
        yield client


async def read_sse(url: str, token: str, seconds: float = 90) -> list[dict[str, Any]]:
    """A job's events over the hub's SSE, from seq 1 to its terminal event."""
    frames: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=seconds) as client, client.stream(
            "GET", url, params={"token": token, "since": 0}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                frame = json.loads(line[5:])
                if frame.get("type") in {"progress", "status"}:
                    frames.append(frame)
                    if frame["type"] == "status" and frame["status"] in TERMINAL:
                        break
    return frames


def assert_roll_up(frames: list[dict[str, Any]], child_ids: set[str]) -> None:
    """Gap-free seq, a percent that never goes backwards and ends at 100, each progress naming its child."""
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    rolled = [f for f in frames if f["type"] == "progress"]
    percents = [f["progress"]["percent"] for f in rolled]
    assert percents and percents == sorted(percents), percents
    assert frames[-1]["status"] == "succeeded" and frames[-1]["progress"]["percent"] == 100.0
    assert {f["child"]["id"] for f in rolled} == child_ids
    assert all(set(f["child"]) == {"id", "status", "percent"} for f in rolled)


async def test_a_chain_passes_results_and_rolls_up_over_sse_and_long_poll(
    http: httpx.AsyncClient, services: ServiceFactory
) -> None:
    hub = services("hub")
    chain = await submit_flow(http, {"chain": [steps(10, 0.05), collect("after")]})
    first, second = await kids(http, chain["id"])
    assert second["status"] == "queued" and second["queued_reason"] == "waiting_for_dependencies"
    assert {first["parent_id"], first["root_id"], second["parent_id"], second["root_id"]} == {chain["id"]}
    assert first.get("queued_reason") is None and first["kind"] == "job"
    sse = await read_sse(f"{hub.url}/v1/jobs/{chain['id']}/events", chain["stream"]["token"])
    polled = await follow(http, chain["id"])
    done = polled[-1]
    assert done["status"] == "succeeded", done["error"]
    last = (await kids(http, chain["id"]))[1]
    assert last["result"]["inputs"][0]["steps_run"] == 10  # the previous step's result
    assert done["result"] == last["result"] and done["progress"]["percent"] == 100.0
    assert_roll_up(sse, {first["id"], second["id"]})
    assert any(0 < f["progress"].get("percent", 0) < 100 and "eta_seconds" in f["progress"] for f in sse)
    polled_percents = [v["progress"].get("percent", 0) for v in polled]
    assert polled_percents == sorted(polled_percents)


async def test_group_chord_and_nested_shapes(http: httpx.AsyncClient, settings: Settings) -> None:
    group = await submit_flow(http, {"group": [steps(2), steps(3), collect("g")]})
    chord = await submit_flow(http, {"chord": {"group": [steps(2), steps(4)], "then": collect("sum")}})
    nested = await submit_flow(http, {"chain": [
        {"group": [steps(2), {"chain": [steps(1), collect("inner")]}], "weight": 3},
        {"chord": {"group": [collect("m1"), collect("m2")], "then": collect("then")}},
    ]})
    results = {name: await final(http, job["id"]) for name, job in
               {"group": group, "chord": chord, "nested": nested}.items()}
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(results, "succeeded"), results
    assert [r["steps_run"] for r in results["group"]["result"][:2]] == [2, 3]
    assert results["group"]["result"][2] == {"label": "g", "inputs": []}
    # A chord's `then` gets the group's results, in order.
    assert [i["steps_run"] for i in results["chord"]["result"]["inputs"]] == [2, 4]
    outer = await kids(http, nested["id"])
    assert [c["kind"] for c in outer] == ["workflow", "workflow"]
    assert all(c["root_id"] == nested["id"] for c in outer)
    inner = await kids(http, (await kids(http, outer[0]["id"]))[1]["id"])
    assert inner[1]["result"]["inputs"][0]["steps_run"] == 1 and inner[1]["root_id"] == nested["id"]
    members = await kids(http, outer[1]["id"])
    assert members[0]["result"]["inputs"] == [outer[0]["result"]]  # the chord started with the group's result
    assert results["nested"]["result"]["inputs"] == [m["result"] for m in members[:2]]
    store = make_store(settings)
    try:  # the nested root's own stream: gap-free from 1, never backwards, names its direct children
        root_events = events(store, nested["id"])
        assert_roll_up(root_events, {c["id"] for c in outer})
        assert root_events[0]["seq"] == 1
    finally:
        close_store(store)


def missing_file() -> dict[str, Any]:
    """A step that fails at once, for good (PermanentError: no such file)."""
    return {"task": "files.checksum", "args": {"file_id": str(uuid.uuid4())}}


async def wait_for(http: httpx.AsyncClient, job_id: str, statuses: set[str], seconds: float = 60) -> dict[str, Any]:
    for _ in range(int(seconds / 0.1)):
        view = (await http.get(f"/v1/jobs/{job_id}", headers=DEV)).json()
        if view["status"] in statuses:
            return dict(view)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{job_id} not in {statuses}: {view['status']}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_failure_policies_cancel_cascade_and_requeue_resume(http: httpx.AsyncClient) -> None:
    fast = await submit_flow(http, {"group": [missing_file(), steps(400, 0.05)]}, "fail_fast")
    cont = await submit_flow(http, {"group": [missing_file(), steps(3), missing_file()]}, "continue")
    cancel = await submit_flow(http, {"chain": [steps(400, 0.05), collect("never")]})
    retry = await submit_flow(http, {"chain": [{"task": "demo.steps", "args": {"steps": 2, "fail_times": 4}},
                                               collect("after")]})

    # fail_fast: the parent fails naming the failed step; the long sibling is cancelled.
    failed = await final(http, fast["id"])
    bad, long = await kids(http, fast["id"])
    assert failed["status"] == "failed" and bad["id"] in failed["error"]["message"]
    assert (await wait_for(http, long["id"], TERMINAL))["status"] == "cancelled"

    # continue: the rest runs; the parent fails at the end naming every failed step.
    ended = await final(http, cont["id"])
    one, ok, two = await kids(http, cont["id"])
    assert ok["status"] == "succeeded" and ended["status"] == "failed"
    assert one["id"] in ended["error"]["message"] and two["id"] in ended["error"]["message"]
    assert ok["id"] not in ended["error"]["message"]

    # cancel cascades to every step below the parent, running or waiting.
    running, waiting = await kids(http, cancel["id"])
    await wait_for(http, running["id"], {"running"})
    response = await http.post(f"/v1/jobs/{cancel['id']}/cancel", headers=DEV)
    assert response.status_code == 202, response.text
    assert (await final(http, cancel["id"]))["status"] == "cancelled"
    assert (await wait_for(http, running["id"], TERMINAL))["status"] == "cancelled"
    assert (await wait_for(http, waiting["id"], TERMINAL))["status"] == "cancelled"

    # A failed step lands in dead letters; requeuing it resumes the workflow from there.
    assert (await final(http, retry["id"]))["status"] == "failed"
    flaky, after = await kids(http, retry["id"])
    assert flaky["status"] == "failed"
    assert (await wait_for(http, after["id"], TERMINAL))["status"] == "cancelled"  # cancelled by fail_fast
    letters = (await http.get("/v1/dead-letters", headers=DEV)).json()["items"]
    letter = next(item for item in letters if item["job_id"] == flaky["id"])
    response = await http.post(f"/v1/dead-letters/{letter['id']}/requeue", headers=DEV)
    assert response.status_code == 202, response.text
    resumed = await final(http, retry["id"])
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["result"]["inputs"][0]["steps_run"] >= 1  # the requeued step's result reached its successor


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_fail_fast_fails_every_node_above_the_failed_step_and_cancels_the_rest(http: httpx.AsyncClient) -> None:
    """Nested fail_fast: the nodes between the failed step and the root fail naming the step, as the root does;
    the steps and nodes the failure did not reach (a sibling branch, a step after it) are cancelled."""
    flow = await submit_flow(http, {"group": [
        {"chain": [{"group": [missing_file(), steps(400, 0.05)]}, collect("never")]},
        {"chain": [steps(400, 0.05), collect("never either")]},
    ]}, "fail_fast")
    root = await final(http, flow["id"])
    outer, sibling = await kids(http, flow["id"])
    inner, after = await kids(http, outer["id"])
    bad, long = await kids(http, inner["id"])
    assert root["status"] == "failed" and bad["id"] in root["error"]["message"]
    for node in (outer, inner):
        ended = await wait_for(http, node["id"], TERMINAL)
        assert ended["status"] == "failed", ended
        assert ended["error"]["type"] == "workflow_failed" and bad["id"] in ended["error"]["message"], ended
    for job in (long, after, sibling, *await kids(http, sibling["id"])):
        assert (await wait_for(http, job["id"], TERMINAL))["status"] == "cancelled", job
    # Cancelled by the workflow (a running step records its own cancel when it stops).
    assert (await wait_for(http, sibling["id"], TERMINAL))["error"]["type"] == "workflow_aborted"
    assert (await wait_for(http, after["id"], TERMINAL))["error"]["type"] == "workflow_aborted"
