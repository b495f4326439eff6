"""Each built-in task end to end as a client uses Longrun: upload over HTTP, submit, follow by long-poll, read
the result — real uvicorn gateway, real worker process, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import httpx
import pytest

from longrun_common.jobs import JobStore
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import events

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer dev-key"}


def follow(http: httpx.Client, job_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Long-poll the job until it ends; returns every view seen (each with a newer seq)."""
    seen: list[dict[str, Any]] = []
    seq = 0
    for _ in range(int(timeout / 5) + 50):
        job = http.get(f"/v1/jobs/{job_id}", params={"wait": 5, "after_seq": seq}, headers=AUTH).json()
        if job["seq"] > seq:
            seen.append(job)
            seq = job["seq"]
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return seen
    raise TimeoutError(f"job {job_id} did not finish: {seen[-1:]}")


def upload(http: httpx.Client, name: str, content: bytes) -> dict[str, Any]:
    response = http.post("/v1/files", files={"file": (name, content)}, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


def submit(http: httpx.Client, task: str, args: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/jobs", json={"task": task, "args": args}, headers=AUTH)
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_every_builtin_task_through_the_gateway(services: ServiceFactory, job_store: JobStore) -> None:
    worker, gateway = services("worker", "--concurrency", "2", wait=False), services("gateway", wait=False)
    wait_ready(worker, gateway)  # the worker registers the catalog before it is ready, so before the gateway is asked
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert {t["name"] for t in http.get("/v1/tasks", headers=AUTH).json()["tasks"]} >= {
            "demo.steps", "files.checksum", "csv.profile"}

        blob = b"".join(i.to_bytes(4, "big") for i in range(300_000))
        stored = upload(http, "blob.bin", blob)
        assert stored["sha256"] == hashlib.sha256(blob).hexdigest() and stored["size"] == len(blob)
        table = io.StringIO()
        csv.writer(table).writerows([["city", "population"], *[[f"c{i % 40}", i * 10] for i in range(3000)]])
        sheet = upload(http, "cities.csv", table.getvalue().encode())

        jobs = {
            "demo.steps": submit(http, "demo.steps", {"steps": 20, "delay": 0.02}),
            "files.checksum": submit(http, "files.checksum", {"file_id": stored["id"]}),
            "csv.profile": submit(http, "csv.profile", {"file_id": sheet["id"]}),
        }
        for task, job in jobs.items():
            views = follow(http, job["id"])
            final = views[-1]
            assert final["status"] == "succeeded", (task, final["error"])
            assert final["progress"]["percent"] == 100.0
            percents = [v["progress"].get("percent") for v in views if v["progress"].get("percent") is not None]
            assert percents == sorted(percents), f"{task}: progress went backwards: {percents}"
            jobs[task] = final

        assert jobs["demo.steps"]["result"]["steps_run"] == 20
        # The task's free-form progress meta: in its events, the job view while running and at the end, and SQL.
        steps_id = jobs["demo.steps"]["id"]
        meta = {"attempt": 1, "resumed_from": 0}
        assert jobs["demo.steps"]["progress"]["meta"] == meta
        progress_events = [e for e in events(job_store, steps_id) if e["type"] == "progress"]
        assert progress_events and all(e["progress"]["meta"] == meta for e in progress_events[1:])
        assert job_store.get(steps_id).progress["meta"] == meta  # type: ignore[union-attr]
        assert jobs["files.checksum"]["result"]["sha256"] == stored["sha256"]
        profile = jobs["csv.profile"]["result"]
        assert profile["rows"] == 3000
        columns = {c["name"]: c for c in profile["columns"]}
        assert columns["population"]["type"] == "integer" and columns["population"]["max"] == 29990
        assert columns["city"]["distinct_estimate"] == 40

        # The non-CSV file fails the job with a clear error, at once (no retry).
        bad = submit(http, "csv.profile", {"file_id": stored["id"]})
        final = follow(http, bad["id"])[-1]
        assert final["status"] == "failed" and final["attempt"] == 1
        assert "not a CSV" in final["error"]["message"]
