"""Helpers for the workflow tests: spec nodes, submit, children, follow by long-poll."""

from __future__ import annotations

from typing import Any

import httpx
from gateway_support import DEV

TERMINAL = {"succeeded", "failed", "cancelled"}


def steps(n: int, delay: float = 0.02, **extra: Any) -> dict[str, Any]:
    return {"task": "demo.steps", "args": {"steps": n, "delay": delay}, **extra}


def collect(label: str) -> dict[str, Any]:
    return {"task": "demo.collect", "args": {"label": label}}


async def submit_flow(http: httpx.AsyncClient, spec: dict[str, Any], on_failure: str = "fail_fast") -> dict[str, Any]:
    response = await http.post("/v1/workflows", json={"spec": spec, "on_failure": on_failure}, headers=DEV)
    assert response.status_code == 202, response.text
    body = dict(response.json())
    assert body["kind"] == "workflow" and body["parent_id"] is None and body["root_id"] is None
    return body


async def kids(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/jobs/{job_id}/children", headers=DEV)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def follow(http: httpx.AsyncClient, job_id: str, seconds: float = 90) -> list[dict[str, Any]]:
    """Long-poll a job until it ends; every view seen (each with a newer seq)."""
    seen: list[dict[str, Any]] = []
    seq = 0
    for _ in range(int(seconds / 5) + 50):
        view = (await http.get(f"/v1/jobs/{job_id}", params={"wait": 5, "after_seq": seq}, headers=DEV)).json()
        if view["seq"] > seq:
            seen.append(view)
            seq = view["seq"]
        if view["status"] in TERMINAL:
            return seen
    raise TimeoutError(f"job {job_id} did not finish: {seen[-1:]}")


async def final(http: httpx.AsyncClient, job_id: str, seconds: float = 90) -> dict[str, Any]:
    return (await follow(http, job_id, seconds))[-1]
