"""Hostile frames on both sockets: every bad frame ends in a clean close with its code, the connection is removed,
and nothing the hub answers grows with what the client sent (issue 7, defects 1 and 2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets
from hubtest import Jobs, close_of, eventually, inprocess_hub, private_hub, read_until_closed, ws_url

from longrun_common.settings import Settings
from longrun_hub.frames import CLIENT_FRAME_MAX
from longrun_hub.ws import MuxSocket
from tests.support.fixtures import ServiceFactory
from tests.support.processes import Service

pytestmark = pytest.mark.integration


def metric(base: str, line: str) -> float:
    """One sample of the hub's /metrics, e.g. `longrun_hub_connections{transport="mux"}`."""
    for row in httpx.get(base + "/metrics", timeout=5).text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{line} not in /metrics")


async def connections(base: str, transport: str = "mux") -> float:
    return await asyncio.to_thread(metric, base, f'longrun_hub_connections{{transport="{transport}"}}')


@pytest.fixture(scope="module")
def hostile_hub(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A hub of this module's own, so its connection gauge counts only these tests' sockets."""
    with private_hub(redis_url, tmp_path_factory.mktemp("hostile-hub"), "hub-hostile") as service:
        yield service


@pytest.fixture
def hjobs(hostile_hub: Service, jobs: Jobs, redis_url: str) -> Jobs:
    settings = Settings(redis_url=redis_url, key_prefix=hostile_hub.env["LONGRUN_KEY_PREFIX"])
    return Jobs(jobs.client, settings)


async def test_deeply_nested_frame_closes_1008_and_frees_the_connection(hostile_hub: Service, hjobs: Jobs) -> None:
    """`[[[…]]]` made the JSON parser raise RecursionError, which killed the reader: no close, no more answers,
    and the connection counted forever."""
    base = hostile_hub.url
    url = ws_url(base, "/v1/ws", token=hjobs.token(None))
    for nested in ("[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000):
        assert await close_of(url, nested) == (1008, "frame is nested too deeply")
    await eventually(lambda: connections(base), 0.0)
    assert "Traceback" not in hostile_hub.logs()


async def test_error_frames_and_close_reasons_never_echo_unbounded_input(hostile_hub: Service, hjobs: Jobs) -> None:
    url = ws_url(hostile_hub.url, "/v1/ws", token=hjobs.token(None))
    bad_id = "bad:" + "x" * 7000
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "job_id": bad_id}))
        answer = await ws.recv()
        frame = json.loads(answer)
        assert frame["type"] == "error" and frame["code"] == 4404
        assert frame["job_id"] == bad_id[:128] and len(answer) < 300
        # Still answering: the socket stays open after a per-job error.
        await ws.send(json.dumps({"op": "subscribe", "job_id": "also:bad"}))
        assert json.loads(await ws.recv())["job_id"] == "also:bad"
    # Reasons quoting a client's value are cut short, and never past what a close frame can carry (a reason of
    # 120 two-byte characters made the close itself fail: the client saw 1006 instead of 1008).
    for frame_text in (json.dumps({"op": "é" * 3000}, ensure_ascii=False),
                       json.dumps({"op": "subscribe", "job_id": "j", "since": "9" * 5000}),
                       json.dumps({"op": "subscribe", "job_id": "j", "since": ["x" * 3000]})):
        code, reason = await close_of(url, frame_text)
        assert code == 1008, (code, reason)
        assert 0 < len(reason.encode()) <= 123
    code, reason = await close_of(url, json.dumps({"op": "\ud800" * 50}))  # a lone surrogate, as JSON allows
    assert code == 1008 and reason.startswith("unknown op")


@pytest.mark.parametrize("path", ["/v1/ws", "/v1/ws/jobs/{job}"])
@pytest.mark.parametrize(("frame", "code"), [
    ("x" * (CLIENT_FRAME_MAX + 1), 1009),
    # The rest of a big frame was still unread when uvicorn closed the connection: the kernel reset it and the
    # client lost the close frame (1006). The hub now half-closes and drains.
    (b"x" * 1024 * 1024, 1009),
    ("x" * 1024 * 1024, 1009),
    (b'{"op": "subscribe", "job_id": "\xc3"}', 1007),  # text that is not UTF-8
], ids=["just-over", "1MiB-binary", "1MiB-text", "bad-utf8"])
async def test_frames_over_the_limit_or_not_utf8_close_with_their_code(hostile_hub: Service, hjobs: Jobs, path: str,
                                                     frame: str | bytes, code: int) -> None:
    job = await hjobs.create()
    token = hjobs.token(None) if path == "/v1/ws" else hjobs.token(job)
    url = ws_url(hostile_hub.url, path.format(job=job), token=token)
    async with websockets.connect(url) as ws:
        if path != "/v1/ws":
            assert json.loads(await ws.recv())["type"] == "snapshot"
        with contextlib.suppress(websockets.ConnectionClosed):  # (the hub may close while this is sent)
            await ws.send(frame, text=code == 1007 or isinstance(frame, str))
            await ws.send(frame, text=code == 1007 or isinstance(frame, str))  # more, after the close
        received = await read_until_closed(ws, within=10)
    assert received.code == code
    await eventually(lambda: connections(hostile_hub.url, "mux" if path == "/v1/ws" else "ws"), 0.0)


async def test_answers_nobody_reads_count_against_the_queue_limit(services: ServiceFactory, jobs: Jobs) -> None:
    """Error frames went around the per-client bounds: a client sending bad frames and never reading made the
    hub queue every answer (with a 1 MB job id, 3 MB each). Now the client is closed 1013 at the queue limit —
    long before the send timeout (60 s here) would notice."""
    hub = services("hub", env={"LONGRUN_HUB_QUEUE_SIZE": "4", "LONGRUN_HUB_QUEUE_LIMIT": "8",
                               "LONGRUN_HUB_SEND_TIMEOUT": "60"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's buffers fill soon
    sock.connect(("127.0.0.1", hub.port or 0))
    ws = await websockets.connect(ws_url(hub.url, "/v1/ws", token=jobs.token(None)), sock=sock, max_queue=1)
    closed = 0.0
    async with asyncio.timeout(30):
        for i in range(200_000):
            await ws.send(json.dumps({"op": "subscribe", "job_id": f"bad:{i}" + "x" * 80}))
            if i % 1000 == 999:
                closed = await asyncio.to_thread(metric, hub.url, "longrun_hub_slow_clients_closed_total")
                if closed:
                    break
    assert closed == 1.0
    received = await read_until_closed(ws, within=20)  # everything sent before, then the reason
    assert received.code == 1013
    assert all(f["type"] == "error" for f in received.frames)
    await eventually(lambda: connections(hub.url), 0.0)


@pytest.fixture
async def hub_in_process(settings: Settings) -> AsyncIterator[tuple[str, object]]:
    async with inprocess_hub(settings) as served:
        yield served


async def test_any_reader_failure_closes_1011_and_removes_the_connection(
        hub_in_process: tuple[str, object], settings: Settings, jobs: Jobs, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The deeper cause of the zombie sockets: the sender learns of the client leaving only from the reader, so a
    reader that died of any exception left the sender waiting forever. Whatever kills the reader now closes."""
    base, app = hub_in_process

    async def broken(*args: object) -> str | None:
        raise KeyError("a bug in frame handling")

    monkeypatch.setattr(MuxSocket, "_handle", broken)
    hub = app.state.hub  # type: ignore[attr-defined]
    assert await close_of(ws_url(base, "/v1/ws", token=jobs.token(None)), '{"op": "subscribe"}') == (
        1011, "internal error; reconnect")
    await eventually(lambda: _count(hub.connections), 0)
    assert "its reader failed" in caplog.text


async def _count(items: set[object]) -> int:
    return len(items)
