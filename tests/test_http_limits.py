"""Request-line and header limits and the header deadline, on the gateway and the hub as users start them
(`python -m …`), spoken to with raw sockets (issue 7, defect 7).

Before: a WebSocket upgrade with a request line over 8 KiB got no answer at all (websockets refused it, uvicorn
never wrote the refusal), plain requests had no header limit, and a client could hold a connection with
unfinished headers, or none, for as long as it liked."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from longrun_common.db import migrate
from longrun_common.httpserver import HEADERS_MAX, REQUEST_LINE_MAX
from longrun_common.settings import Settings
from tests.support.processes import Service, free_port, python_module, service_env

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.5
UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n")


@pytest.fixture(scope="module", params=["gateway", "hub"])
def server(request: pytest.FixtureRequest, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The gateway, then the hub, each started once for this module (the limits hold no per-test state)."""
    kind: str = request.param
    folder = tmp_path_factory.mktemp(f"limits-{kind}")
    port = free_port()
    database = f"sqlite:///{folder / 'longrun.db'}"
    migrate(Settings(database_url=database))
    env = service_env({
        "LONGRUN_REDIS_URL": redis_url, "LONGRUN_DATABASE_URL": database,
        "LONGRUN_KEY_PREFIX": f"lim{uuid.uuid4().hex[:8]}", "LONGRUN_API_KEYS": "dev:dev-key",
        "LONGRUN_STORAGE_DIR": str(folder / "files"),
        f"LONGRUN_{kind.upper()}_PORT": str(port), "LONGRUN_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    })
    service = Service(kind, python_module(f"longrun_{kind}"), env, folder / f"{kind}.log", port).start(timeout=60)
    yield service
    service.stop()


def exchange(service: Service, request: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send `request`, read until the server closes; (everything read, seconds it took)."""
    with socket.create_connection(("127.0.0.1", service.port or 0), timeout=wait) as sock:
        started = time.monotonic()
        if request:
            sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - started


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_body(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}


def get(path: str, headers: str = "", upgrade: bool = False) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE if upgrade else ''}{headers}\r\n".encode()


@pytest.mark.parametrize("upgrade", [False, True], ids=["http", "websocket"])
def test_request_line_over_the_limit_is_414(server: Service, upgrade: bool) -> None:
    path = "/v1/ws?token=" + "a" * REQUEST_LINE_MAX
    response, _ = exchange(server, get(path, upgrade=upgrade))
    status, body = status_and_body(response)
    assert status == 414, response[:200]
    assert body == {"error": {"code": "uri_too_long",
                              "message": f"request target longer than {REQUEST_LINE_MAX} bytes"}}
    assert b"connection: close" in response.lower()


@pytest.mark.parametrize("upgrade", [False, True], ids=["http", "websocket"])
def test_headers_over_the_limit_are_431(server: Service, upgrade: bool) -> None:
    many = "".join(f"X-Filler-{i}: {'b' * 1000}\r\n" for i in range(HEADERS_MAX // 1000 + 1))
    response, _ = exchange(server, get("/healthz", many, upgrade=upgrade))
    status, body = status_and_body(response)
    assert status == 431, response[:200]
    assert body["error"] == {"code": "headers_too_large", "message": f"request headers larger than {HEADERS_MAX} bytes"}


@pytest.mark.parametrize("headers", [
    "X-Long: " + "h" * 9000 + "\r\n",  # under our limits, over websockets' line limit
    "".join(f"X-{i}: v\r\n" for i in range(130)),  # over websockets' 128 headers
], ids=["long-line", "many-headers"])
def test_websocket_handshakes_websockets_refuses_are_answered(server: Service, headers: str) -> None:
    """uvicorn hands an upgrade to websockets, whose own limits are tighter; its refusal was never written."""
    response, took = exchange(server, get("/v1/ws", headers, upgrade=True))
    assert response.startswith(b"HTTP/1.1 431"), response[:200]
    assert took < HEADER_TIMEOUT


def test_one_endless_header_line_is_431(server: Service) -> None:
    """httptools keeps a header line to itself until it ends: the bound counts the bytes as they arrive."""
    with socket.create_connection(("127.0.0.1", server.port or 0), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        response = b""
        try:
            for _ in range(HEADERS_MAX // 4096 + 8):
                sock.sendall(b"c" * 4096)
                time.sleep(0.01)  # separate reads, as a slow sender's would be
        except (BrokenPipeError, ConnectionResetError):
            pass
        while chunk := sock.recv(65536):
            response += chunk
    assert status_and_body(response)[0] == 431, response[:200]


def test_headers_must_arrive_within_the_deadline(server: Service) -> None:
    # Unfinished headers, a byte now and then: answered 408 and closed at the deadline, however it trickles.
    with socket.create_connection(("127.0.0.1", server.port or 0), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        response = b""
        try:
            while time.monotonic() - started < 8:
                sock.sendall(b"X")
                sock.settimeout(0.3)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                response += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
        took = time.monotonic() - started
    assert status_and_body(response) == (408, {"error": {
        "code": "request_timeout", "message": f"request headers not received within {HEADER_TIMEOUT:g} s"}})
    assert HEADER_TIMEOUT - 0.1 < took < HEADER_TIMEOUT + 2
    # A connection that sends nothing at all is closed (without an answer) at the same deadline.
    response, took = exchange(server, b"")
    assert response == b"" and HEADER_TIMEOUT - 0.1 < took < HEADER_TIMEOUT + 2


def test_requests_within_the_limits_are_served(server: Service) -> None:
    """The limits leave ordinary traffic alone: keep-alive requests, big-but-allowed lines and headers, and a
    connection that waits longer than the header deadline between requests (uvicorn's keep-alive applies)."""
    with socket.create_connection(("127.0.0.1", server.port or 0), timeout=10) as sock:
        ok = get("/healthz?" + "q" * (REQUEST_LINE_MAX - 20), "X-Big: " + "h" * (HEADERS_MAX // 2) + "\r\n")
        for _ in range(2):
            sock.sendall(ok)
            response = read_response(sock)
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            time.sleep(HEADER_TIMEOUT * 0.6)  # twice: more than the deadline in total, and still served
