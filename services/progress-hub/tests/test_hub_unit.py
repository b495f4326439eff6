"""Pure logic, no I/O: outbox coalescing and bounds, frame parsing, token extraction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from longrun_common.events import dumps
from longrun_common.tokens import StreamScope, TokenError, mint
from longrun_hub.__main__ import RedactTokens, install_token_redaction
from longrun_hub.auth import authorize, token_from
from longrun_hub.frames import Event, parse_since, valid_job_id
from longrun_hub.metrics import HubMetrics
from longrun_hub.outbox import CLOSE_TRY_AGAIN, CONTROL, Connection, Item, Limits
from longrun_hub.wsprotocol import Gate, Inbox

pytestmark = pytest.mark.unit


def event(seq: int, kind: str = "progress", status: str = "running", job: str = "j") -> Event:
    text = dumps({"seq": seq, "type": kind, "job_id": job, "ts": 1.0, "status": status, "progress": {"current": seq}})
    parsed = Event.parse(text)
    assert parsed is not None
    return parsed


class FakeHub(SimpleNamespace):
    def release_all(self, conn: Any) -> None:
        self.released = True


def connection(queue_size: int = 3, queue_limit: int = 6) -> Connection:
    hub = FakeHub(limits=Limits(queue_size, queue_limit, 1.0), metrics=HubMetrics(), released=False)
    return Connection(hub)  # type: ignore[arg-type]


def watcher(job: str = "j") -> Any:
    return SimpleNamespace(job_id=job, last=0)


def test_progress_is_coalesced_into_the_newest_queued_frame_only_under_pressure() -> None:
    conn, w = connection(), watcher()
    for seq in range(1, 4):
        conn.push_event(w, event(seq), live=True)
    assert [i.seq for i in conn.items] == [1, 2, 3]  # below the bound: everything queued
    for seq in range(4, 8):
        conn.push_event(w, event(seq), live=True)
    assert [i.seq for i in conn.items] == [1, 2, 7]
    newest = json.loads(conn.items[-1].text)
    assert newest["seq"] == 7 and newest["coalesced"] == 4 and newest["progress"] == {"current": 7}
    assert conn.metrics.coalesced._value.get() == 4


def test_status_changes_are_never_coalesced_and_fence_coalescing() -> None:
    conn, w = connection(queue_size=2, queue_limit=10), watcher()
    conn.push_event(w, event(1), live=True)
    conn.push_event(w, event(2, "status", "retrying"), live=True)
    conn.push_event(w, event(3), live=True)  # the newest queued frame is a status: queued, not merged
    conn.push_event(w, event(4), live=True)  # merged into 3
    conn.push_event(w, event(5, "status", "succeeded"), live=True)
    assert [(i.seq, i.skipped) for i in conn.items] == [(1, 0), (2, 0), (4, 1), (5, 0)]


def test_other_jobs_frames_are_not_touched() -> None:
    conn, a, b = connection(queue_size=1, queue_limit=10), watcher("a"), watcher("b")
    conn.push_event(a, event(1, job="a"), live=True)
    conn.push_event(b, event(1, job="b"), live=True)
    conn.push_event(a, event(2, job="a"), live=True)  # a's newest queued frame is behind b's: still merged
    assert [(i.job_id, i.seq) for i in conn.items] == [("a", 2), ("b", 1)]


def test_a_client_over_the_limit_is_closed_1013_and_released() -> None:
    conn = connection(queue_size=2, queue_limit=4)
    for n in range(5):  # five jobs: nothing to coalesce
        conn.push_event(watcher(f"j{n}"), event(1, job=f"j{n}"), live=True)
    assert conn.closing and conn.hub.released
    assert len(conn.items) == 1 and conn.items[0].kind == CONTROL
    assert conn.items[0].close is not None and conn.items[0].close[0] == CLOSE_TRY_AGAIN
    conn.push_event(watcher(), event(9), live=True)  # nothing more is accepted
    assert len(conn.items) == 1


def test_replayed_frames_are_never_coalesced_and_are_not_pressure() -> None:
    """A replay the client asked for (since) arrives whole: its frames are neither replaced nor replacing,
    and they do not push live frames into coalescing or the client over the limit (paging bounds them)."""
    conn, a, b = connection(queue_size=2, queue_limit=4), watcher("a"), watcher("b")
    for seq in range(1, 11):
        conn.push_event(a, event(seq, job="a"), live=False, replay=True)
    assert not conn.closing and [i.seq for i in conn.items] == list(range(1, 11))
    assert conn.replay_queued == 10
    conn.push_event(b, event(1, job="b"), live=True)
    conn.push_event(b, event(2, job="b"), live=True)  # two live frames: now under pressure
    conn.push_event(a, event(11, job="a"), live=True)  # a's newest queued frame is a replayed one: kept
    conn.push_event(b, event(3, job="b"), live=True)  # coalesced into b's 2
    assert [(i.job_id, i.seq, i.skipped) for i in conn.items][10:] == [("b", 1, 0), ("b", 3, 1), ("a", 11, 0)]
    assert [i.seq for i in conn.items if i.replay] == list(range(1, 11))
    assert not any("coalesced" in json.loads(i.text) for i in conn.items if i.replay)
    conn.push_event(a, event(12, job="a"), live=True)  # merged into a's 11 (a live frame now)
    assert conn.items[-1].seq == 12 and conn.items[-1].skipped == 1
    conn.push_event(b, event(4, "status", "retrying", job="b"), live=True)  # 4 live frames: at the limit
    assert not conn.closing  # 14 queued, but the 10 replayed ones do not count
    conn.push_event(b, event(5, "status", "running", job="b"), live=True)
    assert conn.closing and conn.replay_queued == 0


def test_event_parse_rejects_garbage() -> None:
    assert Event.parse(b"not json") is None
    assert Event.parse(b'{"seq": 1}') is None
    assert Event.parse(b"\xff") is None
    parsed = event(3, "status", "failed")
    assert parsed.terminal and not parsed.is_progress


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("0", 0), (" 12 ", 12), (7, 7),
                                               (str(2**63 - 1), 2**63 - 1), (2**63 - 1, 2**63 - 1)])
def test_parse_since(raw: object, expected: int | None) -> None:
    assert parse_since(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "1.5", "x", -2, True, 1.0, [1], str(2**63), 2**63, str(10**30), 2**64])
def test_parse_since_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match="since"):
        parse_since(raw)


def test_job_ids() -> None:
    assert valid_job_id("0b9c2d8e-8a51-4c1e-9d7e-2f0c4b1a9e33")
    for bad in ("", "a:b", "a b", "x" * 129, None, 5):
        assert not valid_job_id(bad)


def test_tokens() -> None:
    secret = "s" * 40
    token = mint(secret, "dev", "j1", 60)[0]
    assert token_from({"token": [token]}, []) == token
    assert token_from({}, [(b"Authorization", f"Bearer {token}".encode())]) == token
    assert token_from({}, [(b"authorization", b"Basic abc")]) == ""
    assert authorize(secret, token, "j1") == StreamScope("dev", "j1")
    with pytest.raises(PermissionError):
        authorize(secret, token, "j2")
    with pytest.raises(TokenError):
        authorize("t" * 40, token, "j1")
    with pytest.raises(TokenError):
        authorize(secret, "", "j1")


def test_stream_tokens_are_redacted_from_uvicorn_logs(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn logs WebSocket request lines with their query string: the token must never reach a log."""
    token = mint("s" * 40, "dev", "j1", 60)[0]
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5000", f"/v1/ws/jobs/j1?token={token}&since=3"), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /v1/ws/jobs/j1?token=[redacted]&since=3" [accepted]'
    logger = logging.getLogger("uvicorn.error")
    redactor = install_token_redaction()
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.error"), \
                caplog.at_level(logging.INFO, logger="uvicorn.access"):
            logger.info('%s - "WebSocket %s" 403', "127.0.0.1:5001", f"/v1/ws?token={token}")
            logging.getLogger("uvicorn.access").info('%s - "GET %s HTTP/1.1" 200', "127.0.0.1:5002",
                                                     f"/v1/jobs/j1/events?since=2&token={token}")
    finally:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", ""):
            logging.getLogger(name).removeFilter(redactor)
    assert caplog.messages == ['127.0.0.1:5001 - "WebSocket /v1/ws?token=[redacted]" 403',
                               '127.0.0.1:5002 - "GET /v1/jobs/j1/events?since=2&token=[redacted] HTTP/1.1" 200']
    assert token not in caplog.text


async def test_inbox_and_gate_behave_like_the_asyncio_queue_and_event_they_replace() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1 and inbox.qsize() == 1 and await inbox.get() == 2 and inbox.empty()
    first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(3)
    first.cancel()  # woken, but cancelled before it ran: the item goes to the next getter
    assert await second == 3
    with contextlib.suppress(asyncio.CancelledError):
        await first
    gate = Gate()
    waiter = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    assert await waiter is True and gate.is_set()
    gate.clear()
    waiter = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert await asyncio.wait_for(asyncio.shield(_set_later(gate)), 1) is True


async def _set_later(gate: Gate) -> bool:
    asyncio.get_running_loop().call_soon(gate.set)
    return await gate.wait()


class StuckConnection(Connection):
    """A socket that never takes a frame."""

    async def send_item(self, item: Item) -> None:
        await asyncio.Event().wait()

    async def send_close(self, code: int, reason: str) -> None:
        self.closed_with = code


async def test_a_stuck_send_is_cancelled_by_the_sweep_and_closes_1013() -> None:
    hub = FakeHub(limits=Limits(3, 6, 0.05), metrics=HubMetrics(), released=False)
    conn = StuckConnection(hub)  # type: ignore[arg-type]
    conn.push_event(watcher(), event(1), live=True)
    sender = asyncio.create_task(conn.run())
    await asyncio.sleep(0.01)
    assert conn.send_started and not conn.send_stuck(asyncio.get_running_loop().time())  # not yet
    await asyncio.sleep(0.06)
    assert conn.send_stuck(asyncio.get_running_loop().time())
    await asyncio.wait_for(sender, 1)  # ends normally: the sweep's cancel is not the task's
    assert not sender.cancelled() and conn.closed_with == CLOSE_TRY_AGAIN and conn.closing and hub.released
    assert conn.send_started == 0.0
