"""The lean WebSocket protocol (wsprotocol.py) is what serves sockets: it relies on uvicorn internals and falls
back to uvicorn's own (more memory per idle socket) without an error when they change, so these fail instead."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from hubtest import Jobs, SharedHub, inprocess_hub, ws_url

from longrun_common.settings import Settings
from longrun_hub import ws as ws_module
from longrun_hub.ws import WsConnection
from longrun_hub.wsprotocol import Gate, HubWebSocketProtocol, Inbox

pytestmark = pytest.mark.integration

LEAN = 'longrun_hub_websockets_accepted_total{protocol="lean"}'
UNKNOWN_JOB = json.dumps({"op": "subscribe", "job_id": str(uuid.uuid4())})  # answered with an error frame
PLAIN = 'longrun_hub_websockets_accepted_total{protocol="uvicorn"}'


async def accepted(base: str) -> dict[str, float]:
    """The hub's count of accepted WebSockets by protocol."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(base + "/metrics", timeout=5)).text
    rows = dict(row.rsplit(" ", 1) for row in text.splitlines() if row.startswith("longrun_hub_websockets_"))
    return {"lean": float(rows[LEAN]), "uvicorn": float(rows[PLAIN])}


async def test_a_real_hub_process_serves_websockets_with_the_lean_protocol(hub: SharedHub) -> None:
    """`python -m longrun_hub` as deployed: every socket it accepted was served by the lean protocol."""
    before = await accepted(hub.url)
    async with websockets.connect(ws_url(hub.url, "/v1/ws", token=hub.jobs.token(None))) as ws:
        await ws.send(UNKNOWN_JOB)  # (its error frame back: the socket is fully accepted)
        await asyncio.wait_for(ws.recv(), 10)
        after = await accepted(hub.url)
    assert after["lean"] == before["lean"] + 1
    assert after["uvicorn"] == 0


@pytest.fixture
async def served(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Any]]:
    """The hub app under a real uvicorn server in this process, with the `ws` protocol of the test's param."""
    async with inprocess_hub(settings, request.param) as served:
        yield served


async def _open_connection(base: str, app: Any, jobs: Jobs) -> tuple[WsConnection, dict[str, float]]:
    async with websockets.connect(ws_url(base, "/v1/ws", token=jobs.token(None))) as ws:
        await ws.send(UNKNOWN_JOB)
        await asyncio.wait_for(ws.recv(), 10)
        conns = [c for c in app.state.hub.connections if isinstance(c, WsConnection)]
        return conns[0], await accepted(base)


@pytest.mark.parametrize("served", [HubWebSocketProtocol], indirect=True)
async def test_the_lean_protocol_replaces_uvicorn_internals_on_an_accepted_socket(
        served: tuple[str, Any], jobs: Jobs) -> None:
    """What the lean protocol changes, checked on a socket uvicorn accepted: if a uvicorn upgrade renames or
    retypes these attributes, the protocol leaves them alone and this fails (update wsprotocol.py)."""
    base, app = served
    conn, counts = await _open_connection(base, app, jobs)
    protocol = conn._protocol
    assert isinstance(protocol, HubWebSocketProtocol)
    state = vars(protocol)
    assert type(state["queue"]) is Inbox
    assert type(state["writable"]) is Gate
    assert "request" not in state and "response" not in state
    assert protocol.lean
    assert counts == {"lean": 1.0, "uvicorn": 0.0}


@pytest.mark.parametrize("served", ["websockets-sansio"], indirect=True)
async def test_a_socket_without_the_lean_protocol_is_counted_and_reported(
        served: tuple[str, Any], jobs: Jobs, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's own protocol (what a silent fallback looks like): the metric and the log say so."""
    monkeypatch.setattr(ws_module, "_plain_warned", False)  # (warned once per process)
    base, app = served
    _, counts = await _open_connection(base, app, jobs)
    assert counts == {"lean": 0.0, "uvicorn": 1.0}
    assert "not the hub's lean protocol" in caplog.text
