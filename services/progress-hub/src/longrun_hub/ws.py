"""WebSocket endpoints: one job (`/v1/ws/jobs/{id}`) and multiplexed (`/v1/ws`), as raw ASGI apps.

Each connection is two coroutines: the ASGI task drains the outbox into the socket, and a reader task
notices the client leaving (and, on the multiplexed socket, handles subscribe / unsubscribe). Close codes
need an accepted socket, so every refusal is accept-then-close with the code of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from .auth import StreamScope, TokenError, authorize, token_from
from .frames import end_frame, error_frame, parse_since, valid_job_id
from .hub import Hub, Outcome
from .outbox import (
    CLOSE_FORBIDDEN,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    Connection,
    Disconnected,
    Item,
)
from .wsprotocol import HubWebSocketProtocol

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
    transport = "ws"

    def __init__(self, hub: Hub, send: Send) -> None:
        super().__init__(hub)
        self._send = send
        # Served by our uvicorn protocol (`python -m longrun_hub`): frames to an idle socket are written at once.
        protocol = getattr(send, "__self__", None)
        self._protocol = protocol if isinstance(protocol, HubWebSocketProtocol) else None

    def send_now(self, text: str) -> bool:
        protocol = self._protocol
        return protocol is not None and protocol.send_text_now(text)

    async def send_item(self, item: Item) -> None:
        try:
            await self._send({"type": "websocket.send", "text": item.text})
        except OSError as exc:  # uvicorn's ClientDisconnected
            raise Disconnected from exc

    async def send_close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except OSError as exc:
            raise Disconnected from exc


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
        try:
            opened = await self.open(conn, query, job_id, token_scope)
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
        if not isinstance(frame, dict):
            return "frame must be a JSON object"
        op, job_id = frame.get("op"), frame.get("job_id")
        if op not in ("subscribe", "unsubscribe"):
            return f"unknown op {op!r}; expected 'subscribe' or 'unsubscribe'"
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
            conn.push_control(error_frame(job_id, 4429, message_text), job_id=job_id)
            return None
        outcome = await hub.watch(conn, job_id, since, token_scope)
        if outcome in MUX_ERRORS:
            conn.push_control(error_frame(job_id, *MUX_ERRORS[outcome]), job_id=job_id)
        elif outcome is Outcome.FINISHED and since is not None:  # it had ended at `since`: nothing else comes
            conn.push_control(end_frame(job_id, since), job_id=job_id)
        return None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None
