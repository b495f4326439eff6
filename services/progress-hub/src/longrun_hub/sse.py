"""`GET /v1/jobs/{id}/events`: the same stream as Server-Sent Events.

Every frame is a `data:` line with the same JSON as on the WebSocket (so `EventSource.onmessage` sees all of
them); event and snapshot frames carry `id: <seq>`, so a browser's automatic reconnect sends `Last-Event-ID`
and resumes without gaps. The response ends after the terminal event; a resume of a finished job gets 204,
which tells EventSource to stop reconnecting. Keepalive is an SSE comment every `hub_ping_interval`.

SSE streams are not rotated at `hub_max_connection_seconds` (only a shutdown sends the reconnect hint):
EventSource reconnects to the same URL, with the same token, and the token's lifetime equals that maximum, so
a rotation would regularly end in a 401 that EventSource does not retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .auth import TokenError, authorize, token_from
from .frames import parse_since, valid_job_id
from .hub import Hub, Outcome
from .outbox import CONTROL, Connection, Disconnected, Item

CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Type"}
STATUS = {Outcome.NOT_FOUND: 404, Outcome.FORBIDDEN: 403, Outcome.UNAVAILABLE: 503}
MESSAGES = {
    Outcome.NOT_FOUND: "unknown job",
    Outcome.FORBIDDEN: "stream token not valid for this job",
    Outcome.UNAVAILABLE: "Redis unavailable; retry shortly",
}
PING = ": ping"  # an SSE comment: ignored by EventSource, keeps proxies from closing an idle stream
CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 422: "validation_error", 503: "unavailable"}


def error(status: int, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": CODES[status], "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=CORS)


class SseConnection(Connection):
    __slots__ = ("_send",)
    hub: Hub  # (the base class knows it only by what it uses of it)
    transport = "sse"

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self._send: Send | None = None

    async def send_item(self, item: Item) -> None:
        assert self._send is not None
        if item.kind == CONTROL:
            if item.text == PING:
                body = PING + "\n\n"
            elif item.close is not None:  # a reconnect hint: resume soon, spread over a second
                body = f"retry: {random.randint(100, 1000)}\ndata: {item.text}\n\n"
            else:
                body = f"data: {item.text}\n\n"
        else:
            body = f"id: {item.seq}\ndata: {item.text}\n\n"
        await self._chunk(body)

    async def send_close(self, code: int, reason: str) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _chunk(self, body: str) -> None:
        assert self._send is not None
        if self.gone:
            raise Disconnected
        await self._send({"type": "http.response.body", "body": body.encode(), "more_body": True})

    async def keepalive(self, interval: float) -> None:
        """An SSE comment every `interval` while nothing else is sent (proxies drop silent streams)."""
        while not self.closing:
            await asyncio.sleep(interval)
            if not self.items and not self.closing:
                self.push_control(PING)


class EventStream(Response):
    """Streams one SseConnection; the hub has already queued the snapshot or replay."""

    def __init__(self, conn: SseConnection) -> None:  # no body, so no Content-Length (unlike Response)
        self.status_code = 200
        self.background = None
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
                   "x-accel-buffering": "no", **{k.lower(): v for k, v in CORS.items()}}
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.conn = conn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self.conn
        hub = conn.hub
        conn._send = send
        loop = asyncio.get_running_loop()
        watch_disconnect = loop.create_task(_until_disconnect(receive, conn))
        interval = hub.settings.hub_ping_interval
        pinger = loop.create_task(conn.keepalive(interval)) if interval > 0 else None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
            await conn.run()  # ends the body when it sends the close (terminal event, reconnect, too slow)
        finally:
            for task in (watch_disconnect, pinger):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            hub.remove_connection(conn)


async def _until_disconnect(receive: Receive, conn: Connection) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            conn.peer_left()
            return


async def job_events(request: Request) -> Response:
    """SSE for one job: snapshot (or replay after `Last-Event-ID` / `since`), then live events."""
    hub: Hub = request.app.state.hub
    job_id = request.path_params["job_id"]
    query = parse_qs(request.url.query)
    try:
        scope = authorize(hub.settings.token_secret, token_from(query, request.scope["headers"]), job_id)
    except TokenError as exc:
        return error(401, str(exc))
    except PermissionError as exc:
        return error(403, str(exc))
    raw_since = request.headers.get("last-event-id") or request.query_params.get("since")
    try:
        since = parse_since(raw_since)
    except ValueError as exc:
        field = "Last-Event-ID" if request.headers.get("last-event-id") else "since"
        return error(422, str(exc), {"field": field, "value": raw_since})
    if not valid_job_id(job_id):
        return error(404, "unknown job")
    if not hub.accepting:
        return error(503, "hub shutting down; reconnect")
    conn = SseConnection(hub)
    hub.add_connection(conn)
    try:
        outcome = await hub.watch(conn, job_id, since, scope)
    except BaseException:
        hub.remove_connection(conn)
        raise
    if outcome is Outcome.LIVE or outcome is Outcome.GONE:  # GONE: sends what is queued (a hint), then ends
        return EventStream(conn)
    hub.remove_connection(conn)
    if outcome is Outcome.FINISHED:
        return Response(status_code=204, headers=CORS)
    return error(STATUS[outcome], MESSAGES[outcome])
