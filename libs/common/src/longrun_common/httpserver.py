"""uvicorn as the gateway and the hub run it: bounds on what a client may send before its request is known.

uvicorn with httptools (its HTTP parser whenever httptools is installed) bounds neither the request line nor the
headers, and gives a client unlimited time to send them: its keep-alive timer runs only between requests and
stops at the first byte of the next one, so a connection that sends nothing, or headers one byte at a time, is
held for as long as the client likes. For a WebSocket upgrade, uvicorn hands the request to websockets, whose
parser refuses a line over 8 KiB (414) or more than 128 headers (431); but uvicorn's sans-I/O WebSocket protocol
never writes that refusal, so the client hears nothing until its own handshake timeout.

- `LimitedHttpToolsProtocol` (uvicorn's `http=`): a request target over `REQUEST_LINE_MAX` bytes is answered 414,
  headers over `HEADERS_MAX` bytes 431, and headers not complete `header_timeout` seconds after the connection
  opened (or after the previous response, once the next request began) 408; each with `Connection: close`
  and the API's error JSON. A connection that sent nothing in that time is closed without an answer.
- `AnsweringWebSocketsProtocol` (uvicorn's `ws=`): writes the refusal of a handshake websockets could not
  parse (its 414 / 431, else a 400), then closes. And when websockets fails an open socket (a frame over the
  size limit: 1009, text that is not UTF-8: 1007, a protocol error: 1002), uvicorn wrote the close frame and
  closed the TCP connection at once, with the rest of the client's frame still unread; the kernel then resets
  the connection and the client, losing the close frame, sees 1006. It now half-closes instead and reads (and
  drops) what the client still sends until the client closes too, or for `close_timeout` at most. A text
  frame that is not UTF-8 is closed 1007 the same way, logged in one line (uvicorn logs a traceback for each).

`server_options(settings)` gives both to `uvicorn.Config` / `uvicorn.run`. Both rely on uvicorn 0.54 internals
(the parser callbacks and `send_400_response`), hence the pin; anything else is uvicorn's own behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import Settings

REQUEST_LINE_MAX = 8 * 1024  # bytes of request target (path and query): 414 above
HEADERS_MAX = 32 * 1024  # bytes of all header lines together: 431 above

REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
CODES = {400: "bad_request", 408: "request_timeout", 414: "uri_too_long", 431: "headers_too_large"}


class RequestRefused(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def refusal(status: int, message: str, default_headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete `Connection: close` response with the API's error JSON."""
    body = json.dumps({"error": {"code": CODES[status], "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {REASONS[status]}".encode()]
    head += [name + b": " + value for name, value in default_headers or ()]
    head += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request-line and header limits and a header deadline."""

    header_timeout = 10.0  # set per server by `server_options` (through functools.partial, which pickles)

    def __init__(self, *args: Any, header_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if header_timeout is not None:
            self.header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._refused: RequestRefused | None = None
        self._in_headers = False  # a request has begun and its headers are not complete
        self._url_bytes = 0
        self._header_bytes = 0

    # --- the deadline: from the connection (or the request's first byte) to the end of its headers -------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        answering = self.cycle is None or self.cycle.response_complete  # (never inside another response)
        if self._in_headers and answering:
            transport.write(refusal(408, f"request headers not received within {self.header_timeout:g} s",
                                    self.server_state.default_headers))
        transport.close()

    # --- parser callbacks ------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._url_bytes = self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > REQUEST_LINE_MAX:
            self._refuse(414, f"request target longer than {REQUEST_LINE_MAX} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > HEADERS_MAX:
            self._refuse(431, f"request headers larger than {HEADERS_MAX} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        continuing = self._in_headers
        super().data_received(data)
        # httptools buffers a header line until it is complete, so one endless header would never reach
        # `on_header`: count what arrives while headers stay incomplete (a chunk that began the request is
        # not counted, which only makes this bound looser by one read).
        if continuing and self._in_headers and self._refused is None:
            self._header_bytes += len(data)
            if self._header_bytes > HEADERS_MAX and not self.transport.is_closing():
                self._refused = RequestRefused(431, f"request headers larger than {HEADERS_MAX} bytes")
                self.send_400_response(str(self._refused))

    def _refuse(self, status: int, message: str) -> None:
        self._refused = RequestRefused(status, message)
        raise self._refused  # httptools stops parsing; uvicorn then calls send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's one answer to a request it cannot parse: ours says which limit was passed."""
        refused, self._refused = self._refused, None
        self._disarm()
        self._in_headers = False
        if refused is None:
            super().send_400_response(msg)
            return
        self.transport.write(refusal(refused.status, str(refused), self.server_state.default_headers))
        self.transport.close()


class AnsweringWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, answering a handshake request that websockets refused to parse
    and delivering the close code of a socket that websockets failed (see the module docstring)."""

    ended = False  # our side of the stream is ended (failed socket): nothing more is read or written

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return  # failed: what still comes is dropped (`handle_parser_exception`)
        super().data_received(data)
        conn = self.conn
        if self.handshake_initiated or conn.handshake_exc is None or self.transport.is_closing():
            return
        written = b"".join(conn.data_to_send())  # websockets' 414 / 431; empty (end of stream) otherwise
        if not written:
            written = refusal(400, "invalid WebSocket handshake request", self.default_headers)
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.transport.write(written)
        self.transport.close()


    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # (as uvicorn: the app is past its close)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.logger.info("closing a WebSocket (1007): a text frame that is not UTF-8")
            self.conn.fail(1007, "text frame is not UTF-8")
            self.handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_ping(self) -> None:
        if not self.ended:  # (a ping read in the same chunk as the failing frame: no pong after the end)
            super().handle_ping()

    def handle_parser_exception(self) -> None:
        close = self.conn.close_sent
        if close is None:  # (websockets failed without a close frame: uvicorn's way)
            super().handle_parser_exception()
            return
        if not self.close_sent:  # else the app's close is out already, and its close timer running
            self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        # From here on websockets ignores everything, the client's closing reply too: end our side of the stream
        # (after the close frame) so that the client, having read both, closes its side without waiting.
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()
            self.ended = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


def server_options(settings: Settings) -> dict[str, Any]:
    """`uvicorn.Config` / `uvicorn.run` options that apply the limits above."""
    return {
        "http": functools.partial(LimitedHttpToolsProtocol, header_timeout=settings.header_timeout_seconds),
        "ws": AnsweringWebSocketsProtocol,
    }
