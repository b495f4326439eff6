"""Uploads: streamed to storage with sha256, size-limited with nothing left behind, tenant-scoped."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import ACME, DEV, error_of, lifespan, serve
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from starlette.types import Message

from longrun_common.models import StoredFile
from longrun_common.settings import Settings
from longrun_gateway.app import create_app

pytestmark = pytest.mark.integration

LIMIT = 4096


def stored_files(root: str) -> list[Path]:
    base = Path(root)
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


@pytest.fixture
async def small(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway that takes uploads of at most LIMIT bytes."""
    async with serve(create_app(settings.model_copy(update={"max_upload_bytes": LIMIT}))) as client:
        yield client


async def test_upload_stores_the_bytes_and_their_hash(client: httpx.AsyncClient, settings: Settings) -> None:
    data = os.urandom(300_000)
    response = await client.post(
        "/v1/files",
        files={"file": ("../../etc/data.bin", data, "application/x-thing")},
        data={"note": "ignored"},
        headers=DEV,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "name", "size", "sha256"}
    assert body["name"] == "data.bin" and body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.headers["location"] == f"/v1/files/{body['id']}"
    [path] = stored_files(settings.storage_dir)
    assert path == Path(settings.storage_dir) / "dev" / body["id"] and path.read_bytes() == data
    meta = (await client.get(f"/v1/files/{body['id']}", headers=DEV)).json()
    assert meta["sha256"] == body["sha256"] and meta["content_type"] == "application/x-thing"
    assert meta["created_at"].endswith("Z")
    foreign = await client.get(f"/v1/files/{body['id']}", headers=ACME)
    assert foreign.status_code == 404 and error_of(foreign)["code"] == "not_found"


async def test_empty_file(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/files", files={"file": ("empty.txt", b"")}, headers=DEV)).json()
    assert body["size"] == 0 and body["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_exactly_the_limit_is_accepted(small: httpx.AsyncClient) -> None:
    response = await small.post("/v1/files", files={"file": ("max.bin", b"m" * LIMIT)}, headers=DEV)
    assert response.status_code == 201 and response.json()["size"] == LIMIT


async def test_over_the_limit_is_413_and_leaves_nothing(
    small: httpx.AsyncClient, settings: Settings, engine: Engine
) -> None:
    response = await small.post("/v1/files", files={"file": ("big.bin", b"b" * (LIMIT + 1))}, headers=DEV)
    assert response.status_code == 413, response.text
    assert error_of(response)["details"] == {"limit": LIMIT}
    assert stored_files(settings.storage_dir) == []  # neither the file nor its temp part
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(StoredFile)).one() == 0


async def test_streamed_upload_over_the_limit_is_413(small: httpx.AsyncClient, settings: Settings) -> None:
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(100):  # 100 KiB with no Content-Length: the handler must count as it streams
            yield b"s" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await small.post(
        "/v1/files", content=body(), headers={**DEV, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert stored_files(settings.storage_dir) == []


async def test_declared_length_far_over_the_limit_is_413_at_once(small: httpx.AsyncClient) -> None:
    response = await small.post("/v1/files", files={"file": ("huge.bin", b"h" * (LIMIT + 70 * 1024))}, headers=DEV)
    assert response.status_code == 413


async def test_malformed_uploads_are_422(client: httpx.AsyncClient, settings: Settings) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"files": {"other": ("x.txt", b"x")}}, "file: field required"),
        ({"data": {"file": "urlencoded"}}, "file: send multipart/form-data"),
        ({"json": {"file": "nope"}}, "file: send multipart/form-data"),
        (
            {
                "content": b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            "body: malformed multipart body",
        ),
        (
            {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
            "body: multipart boundary missing",
        ),
    ]
    for kwargs, message in cases:
        headers = {**DEV, **kwargs.pop("headers", {})}
        response = await client.post("/v1/files", headers=headers, **kwargs)
        assert response.status_code == 422, (message, response.text)
        assert error_of(response)["message"].startswith(message), response.text
    assert stored_files(settings.storage_dir) == []
    # A `file` part without a filename still counts as the file.
    response = await client.post("/v1/files", files={"file": (None, b"no filename")}, headers=DEV)
    assert response.status_code == 201 and response.json()["name"] == "file"


async def test_boundary_longer_than_the_parser_allows_is_422(
    lite_client: httpx.AsyncClient, sqlite_settings: Settings
) -> None:
    """Found by review: python-multipart refuses boundaries over 256 bytes with its base error class (was a 500)."""
    headers = {**DEV, "Content-Type": "multipart/form-data; boundary=" + "a" * 1000}
    response = await lite_client.post("/v1/files", content=b"x", headers=headers)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "validation_error" and error["message"].startswith("body: malformed multipart body")
    assert stored_files(sqlite_settings.storage_dir) == []


BOUNDARY = "b0undary"
PART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="gone.bin"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()


@pytest.mark.parametrize(
    ("path", "content_type", "first_chunk"),
    [
        ("/v1/files", f"multipart/form-data; boundary={BOUNDARY}", PART_HEAD + b"g" * 10_000),
        ("/v1/jobs", "application/json", b'{"task": "demo.steps", "args": {"ste'),
    ],
    ids=["upload", "json"],
)
async def test_client_disconnect_mid_body_is_quiet_and_leaves_nothing(
    sqlite_settings: Settings, caplog: pytest.LogCaptureFixture, path: str, content_type: str, first_chunk: bytes
) -> None:
    """The client goes away halfway through its body: no 500, no ERROR/traceback, no partial file."""
    settings = sqlite_settings
    app = create_app(settings)
    async with lifespan(app) as state:
        inbox: list[Message] = [
            {"type": "http.request", "body": first_chunk, "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            if inbox:
                return inbox.pop(0)
            await asyncio.Event().wait()  # a server sends nothing after the disconnect
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", b"Bearer dev-key"), (b"content-type", content_type.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("gateway", 80),
            "state": dict(state),
        }
        with caplog.at_level(logging.INFO):
            await asyncio.wait_for(app(scope, receive, send), 10)  # nothing escapes to the server
        metrics = state["gateway"].metrics.render().decode()
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in caplog.records)
    requests = [
        sample.labels
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "longrun_gateway_requests_total"
    ]
    assert requests and all(labels["status"] != "500" for labels in requests), requests
    assert stored_files(settings.storage_dir) == []
