"""WebSocket endpoints: one job (`/v1/ws/jobs/{id}`) and multiplexed (`/v1/ws`), as raw ASGI apps.

Each connection is two coroutines: the ASGI task drains the outbox into the socket, and a reader task
notices the client leaving (and, on the multiplexed socket, handles subscribe / unsubscribe). Close codes
need an accepted socket, so every refusal is accept-then-close with the code of docs/API.md.

The two are tied together: the sender only learns that the client left from the reader, so a reader that
ended without saying so (an exception from a frame) would leave a sender waiting forever on a socket nobody
reads, still counted as connected. Whenever the reader ends, the connection is therefore closing: a bad frame
closes it 1008, anything unexpected 1011 (and is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from .auth import StreamScope, TokenError, authorize, token_from
from .frames import end_frame, error_frame, parse_since, shown, valid_job_id
from .hub import Hub, Outcome
from .outbox import (
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    SUBSCRIPTION_LIMIT,
    Connection,
    Disconnected,
    Item,
)
from .wsprotocol import HubWebSocketProtocol

log = logging.getLogger(__name__)

CLOSE_REASON_BYTES = 123  # a close frame carries at most 125 bytes: the code (2) and the reason in UTF-8

MUX_ERRORS = {
    Outcome.NOT_FOUND: (CLOSE_NOT_FOUND, "unknown job"),
    Outcome.FORBIDDEN: (CLOSE_FORBIDDEN, "stream token not valid for this job"),
    Outcome.UNAVAILABLE: (CLOSE_TRY_AGAIN, "Redis unavailable; subscribe again later"),
}
CLOSES = {
    Outcome.NOT_FOUND: (CLOSE_NOT_FOUND, "unknown job"),
    Outcome.FORBIDDEN: (CLOSE_FORBIDDEN, "stream token not valid for this job"),
    Outcome.UNAVAILABLE: (CLOSE_TRY_AGAIN, "Redis unavailable; reconnect later"),
    Outcome.FINISHED: (CLOSE_NORMAL, "job finished"),
}


class WsConnection(Connection):
    __slots__ = ("_protocol", "_send")
    hub: Hub  # (the base class knows it only by what it uses of it)
    transport = "ws"

    def __init__(self, hub: Hub, send: Send) -> None:
        super().__init__(hub)
        self._send = send
        # Served by our uvicorn protocol (`python -m longrun_hub`): frames to an idle socket are written at once.
        protocol = getattr(send, "__self__", None)
        self._protocol = protocol if isinstance(protocol, HubWebSocketProtocol) else None
        _count_protocol(hub, self._protocol)

    def send_now(self, text: str) -> bool:
        protocol = self._protocol
        return protocol is not None and protocol.send_text_now(text)

    def _closed_by_server(self) -> bool:
        """uvicorn closed the socket itself (a frame over the limit, text that is not UTF-8) and refuses any
        further message; the reader learns it from the disconnect message, maybe after the sender tried."""
        protocol = self._protocol
        return protocol is not None and protocol.close_sent

    async def send_item(self, item: Item) -> None:
        if self._closed_by_server():
            raise Disconnected
        try:
            await self._send({"type": "websocket.send", "text": item.text})
        except OSError as exc:  # uvicorn's ClientDisconnected
            raise Disconnected from exc

    async def send_close(self, code: int, reason: str) -> None:
        if self._closed_by_server():
            raise Disconnected
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})
        except OSError as exc:
            raise Disconnected from exc


def _count_protocol(hub: Hub, protocol: HubWebSocketProtocol | None) -> None:
    """The lean protocol relies on uvicorn internals and falls back silently when they change (see wsprotocol):
    count which one serves each socket, and say it once per process when it is not the lean one."""
    global _plain_warned
    if protocol is not None and protocol.lean:
        hub.metrics.websockets_lean.inc()
        return
    hub.metrics.websockets_plain.inc()
    if not _plain_warned:
        _plain_warned = True
        log.warning("WebSockets are served by %s, not the hub's lean protocol: more memory per idle socket",
                    "our protocol with uvicorn's queue/event (a uvicorn change)" if protocol is not None
                    else "a plain uvicorn protocol")


_plain_warned = False


class MuxConnection(WsConnection):
    __slots__ = ()
    transport = "mux"
    multiplexed = True


class _Socket:
    """Shared handshake: accept, authenticate, then run the connection until it closes."""

    multiplexed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        hub: Hub = scope["app"].state.hub
        await send({"type": "websocket.accept"})
        conn: WsConnection = MuxConnection(hub, send) if self.multiplexed else WsConnection(hub, send)
        if not hub.accepting:
            await conn.send_close(CLOSE_RESTART, "hub shutting down; reconnect")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        job_id = None if self.multiplexed else str(scope["path_params"]["job_id"])
        try:
            token_scope = authorize(hub.settings.token_secret, token_from(query, scope["headers"]), job_id)
        except TokenError as exc:
            await conn.send_close(CLOSE_UNAUTHORIZED, str(exc))
            return
        except PermissionError as exc:
            await conn.send_close(CLOSE_FORBIDDEN, str(exc))
            return
        hub.add_connection(conn)
        reader = asyncio.get_running_loop().create_task(self.read(conn, receive, token_scope))
        reader.add_done_callback(lambda task: _reader_ended(conn, task))
        try:
            try:
                opened = await self.open(conn, query, job_id, token_scope)
            except Exception:  # a bug, not the client's doing: still a clean close, never a silent socket
                log.exception("closing a %s socket: opening it failed", conn.transport)
                conn.close(CLOSE_INTERNAL, "internal error; reconnect")
                opened = False
            del query  # holds the token: not kept for the connection's lifetime
            if opened:
                lifetime = hub.settings.hub_max_connection_seconds
                conn.start_lifetime(lifetime * random.uniform(0.9, 1.1))
            await conn.run()
        finally:
            conn.stop_lifetime()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            hub.remove_connection(conn)

    async def open(self, conn: WsConnection, query: dict[str, list[str]], job_id: str | None,
                   token_scope: StreamScope) -> bool:
        raise NotImplementedError

    async def read(self, conn: WsConnection, receive: Receive, token_scope: StreamScope) -> None:
        raise NotImplementedError


class JobSocket(_Socket):
    """`WS /v1/ws/jobs/{id}?token=…[&since=N]`."""

    async def open(self, conn: WsConnection, query: dict[str, list[str]], job_id: str | None,
                   token_scope: StreamScope) -> bool:
        assert job_id is not None
        try:
            since = parse_since(_first(query, "since"))
        except ValueError as exc:
            conn.close(CLOSE_POLICY, str(exc))
            return False
        if not valid_job_id(job_id):
            conn.close(CLOSE_NOT_FOUND, "unknown job")
            return False
        outcome = await conn.hub.watch(conn, job_id, since, token_scope)
        if outcome is Outcome.GONE:  # already closing (too slow, shutdown) or the client left
            return False
        if outcome is not Outcome.LIVE:
            conn.close(*CLOSES[outcome])
            return False
        return True

    async def read(self, conn: WsConnection, receive: Receive, token_scope: StreamScope) -> None:
        while True:  # clients have nothing to say here; we only listen for them leaving
            if (await receive())["type"] == "websocket.disconnect":
                conn.peer_left()
                return


class MuxSocket(_Socket):
    """`WS /v1/ws?token=…`: `{"op": "subscribe", "job_id", "since"?}` / `{"op": "unsubscribe", "job_id"}`."""

    multiplexed = True

    async def open(self, conn: WsConnection, query: dict[str, list[str]], job_id: str | None,
                   token_scope: StreamScope) -> bool:
        return True

    async def read(self, conn: WsConnection, receive: Receive, token_scope: StreamScope) -> None:
        hub = conn.hub
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                conn.peer_left()
                return
            problem = await self._handle(conn, hub, message, token_scope)
            if problem is not None:
                conn.close(CLOSE_POLICY, problem)
                return
            if conn.items:
                # uvicorn hands over every frame of a read at once: let the sender write this frame's answer
                # before the next one, so the queue bounds measure how the client reads, not how it bursts.
                await asyncio.sleep(0)

    async def _handle(self, conn: WsConnection, hub: Hub, message: Mapping[str, Any],
                      token_scope: StreamScope) -> str | None:
        """Apply one client frame; a string is why the frame is bad (the socket then closes 1008)."""
        text = message.get("text")
        if text is None:
            return "frames must be JSON text"
        try:
            frame = json.loads(text)
        except ValueError:
            return "frame is not JSON"
        except RecursionError:  # nested deeper than the parser's stack (frames are small, but `[[[[…` is not)
            return "frame is nested too deeply"
        if not isinstance(frame, dict):
            return "frame must be a JSON object"
        op, job_id = frame.get("op"), frame.get("job_id")
        if op not in ("subscribe", "unsubscribe"):
            return f"unknown op {shown(op)}; expected 'subscribe' or 'unsubscribe'"
        if not isinstance(job_id, str) or not job_id:
            return f"{op} needs a job_id (string)"
        current = conn.watchers.get(job_id)
        if op == "unsubscribe":
            if current is not None:
                hub.release(current)
            return None
        try:
            since = parse_since(frame.get("since"))
        except ValueError as exc:
            return str(exc)
        if current is not None:  # subscribing again restarts the job's stream from `since`
            hub.release(current)
        if not valid_job_id(job_id):
            conn.push_control(error_frame(job_id, CLOSE_NOT_FOUND, "unknown job"), job_id=job_id)
            return None
        if token_scope.job_id is not None and token_scope.job_id != job_id:
            conn.push_control(error_frame(job_id, CLOSE_FORBIDDEN, "stream token is for another job"), job_id=job_id)
            return None
        if len(conn.watchers) >= hub.settings.hub_max_subscriptions:
            message_text = f"at most {hub.settings.hub_max_subscriptions} jobs per socket; unsubscribe first"
            conn.push_control(error_frame(job_id, SUBSCRIPTION_LIMIT, message_text), job_id=job_id)
            return None
        outcome = await hub.watch(conn, job_id, since, token_scope)
        if outcome in MUX_ERRORS:
            conn.push_control(error_frame(job_id, *MUX_ERRORS[outcome]), job_id=job_id)
        elif outcome is Outcome.FINISHED and since is not None:  # it had ended at `since`: nothing else comes
            conn.push_control(end_frame(job_id, since), job_id=job_id)
        return None


def _reader_ended(conn: WsConnection, task: asyncio.Task[None]) -> None:
    """The reader is done: the connection must be closing (see the module docstring)."""
    if task.cancelled():  # by `_Socket.__call__`, after the sender ended
        return
    exc = task.exception()
    if exc is not None:
        log.error("closing a %s socket: its reader failed", conn.transport, exc_info=exc)
        conn.close(CLOSE_INTERNAL, "internal error; reconnect")
    elif not conn.closing:  # (a reader returns only after a close or the peer leaving; kept as a guard)
        conn.close(CLOSE_INTERNAL, "internal error; reconnect")


def close_reason(reason: str) -> str:
    """`reason` cut to what a close frame can carry (123 bytes of UTF-8, on a character boundary)."""
    data = reason.encode("utf-8", "replace")  # (a lone surrogate would make the encoder fail)
    return data[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None
