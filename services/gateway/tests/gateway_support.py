"""Helpers for the gateway tests: run an app's real lifespan in-process, seed the catalog, seed jobs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.types import Message, Receive, Scope, Send

from longrun_common.catalog import TaskPolicy
from longrun_common.db import create_db_engine
from longrun_common.models import TaskRecord
from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from longrun_gateway.state import Gateway

DEV = {"Authorization": "Bearer dev-key"}
ACME = {"Authorization": "Bearer acme-key"}

DEMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {"type": "integer", "minimum": 1, "maximum": 100000},
        "delay": {"type": "number", "minimum": 0, "maximum": 60},
        "fail_times": {"type": "integer", "minimum": 0, "default": 0},
    },
    "required": ["steps"],
    "additionalProperties": False,
}
DEMO_POLICY = TaskPolicy(max_attempts=4, soft_time_limit=300, time_limit=600, max_time_limit=3600)
REPORT_POLICY = TaskPolicy(max_attempts=1, queue="low", max_time_limit=7200)


def seed_catalog(engine: Engine) -> None:
    """The task rows a worker would upsert at start."""
    with Session(engine) as session:
        session.add(
            TaskRecord(
                name="demo.steps",
                description="Count to `steps`.",
                args_schema=DEMO_SCHEMA,
                policy=DEMO_POLICY.model_dump(mode="json"),
            )
        )
        session.add(
            TaskRecord(
                name="reports.build",
                description="Build a report.",
                args_schema={
                    "type": "object",
                    "properties": {
                        "rows": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}
                    },
                },
                policy=REPORT_POLICY.model_dump(mode="json"),
            )
        )
        session.commit()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Drive the ASGI lifespan protocol exactly as a server does; yields the lifespan state."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        kind = message["type"]
        target = started if kind.startswith("lifespan.startup") else stopped
        if kind.endswith(".failed"):
            target.set_exception(RuntimeError(message.get("message", kind)))
        elif not target.done():
            target.set_result(None)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(started, 10)
    try:
        yield state
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(stopped, 10)
        await task


@contextlib.asynccontextmanager
async def serve(app: FastAPI, *, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to `app` in-process, with the lifespan running around it."""
    async with lifespan(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            # As a server does: each request gets a shallow copy of the lifespan state.
            await app({**scope, "state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            client.gateway = state["gateway"]  # type: ignore[attr-defined]
            yield client


@contextlib.asynccontextmanager
async def serve_seeded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """`serve` for a gateway on `settings`, its task catalog seeded first as a worker would have left it."""
    engine = create_db_engine(settings)
    seed_catalog(engine)
    engine.dispose()
    async with serve(create_app(settings)) as client:
        yield client


def gateway_of(client: httpx.AsyncClient) -> Gateway:
    """The running app's Gateway (its store, Redis clients, live listener)."""
    return client.gateway  # type: ignore[attr-defined,no-any-return]


async def submit(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    """Submit a job (demo.steps by default) and return its view; asserts 202."""
    body.setdefault("task", "demo.steps")
    body.setdefault("args", {"steps": 5})
    response = await client.post("/v1/jobs", json=body, headers=headers or DEV)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


async def wait_subscribed(client: httpx.AsyncClient, count: int = 1) -> None:
    """Until the shared listener holds `count` confirmed job channels (a long-poll is parked on them)."""
    live = gateway_of(client).live
    for _ in range(500):
        if live.channels == count and live.settled:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{gateway_of(client).live.channels} channels subscribed, expected {count}")


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error envelope, checked for shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]
