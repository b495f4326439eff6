"""Streaming multipart upload: the `file` part goes straight to disk while hashed, never buffered whole.

The bytes land in a hidden temp file next to the destination and are renamed into place only when complete,
so a failed or oversized upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .errors import ApiError, invalid

FIELD = "file"
MAX_OTHER_PART = 64 * 1024  # other form fields are ignored, but not without bound
MAX_HEADER_BYTES = 16 * 1024
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Received:
    name: str
    size: int
    sha256: str
    content_type: str | None


@dataclass
class _Sink:
    """The file being written: sync I/O, always called from a worker thread."""

    final: Path
    temp: Path
    handle: IO[bytes] | None = None
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, chunks: list[bytes]) -> None:
        if self.handle is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.temp.open("wb")
        for chunk in chunks:
            self.handle.write(chunk)

    def commit(self) -> None:
        self.write([])  # an empty file still gets created
        assert self.handle is not None
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.final)

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


class _Parts:
    """python-multipart callbacks: keep the first `file` part's bytes, skip (bounded) everything else."""

    def __init__(self, sink: _Sink, limit: int) -> None:
        self.sink, self.limit = sink, limit
        self.pending: list[bytes] = []
        self.header_name = self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.in_file = self.found = self.complete = False
        self.other_size = 0
        self.name = "file"
        self.content_type: str | None = None

    def on_part_begin(self) -> None:
        self.headers, self.header_bytes, self.in_file, self.other_size = {}, 0, False, 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]
        self._count_header(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        self._count_header(end - start)

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") == FIELD.encode() and not self.found:
            self.in_file = self.found = True
            self.name = safe_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            ctype = self.headers.get(b"content-type")
            cleaned = _UNSAFE_NAME.sub("", ctype.decode("latin-1"))[:255] if ctype else ""
            self.content_type = cleaned or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if not self.in_file:
            self.other_size += size
            if self.other_size > MAX_OTHER_PART:
                raise invalid("body", f"form fields other than `{FIELD}` are limited to {MAX_OTHER_PART} bytes")
            return
        self.sink.size += size
        if self.sink.size > self.limit:
            raise too_large(self.limit)
        chunk = data[start:end]
        self.sink.digest.update(chunk)
        self.pending.append(chunk)

    def on_part_end(self) -> None:
        if self.in_file:
            self.complete = True
        self.in_file = False

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise invalid("body", "multipart part headers too large")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"file is larger than the {limit} byte limit", details={"limit": limit})


def safe_name(raw: str) -> str:
    """The client's file name without any path and control characters (it is metadata, never a path)."""
    name = _UNSAFE_NAME.sub("", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:255] or "file"


async def receive(request: Request, destination: Path, limit: int) -> Received:
    """Stream the request's `file` part to `destination`; 413 past `limit` bytes, 422 when malformed."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise invalid(FIELD, f"send multipart/form-data with a `{FIELD}` field")
    boundary = params.get(b"boundary")
    if not boundary:
        raise invalid("body", "multipart boundary missing from Content-Type")
    sink = _Sink(destination, destination.with_name(f".{destination.name}.part"))
    parts = _Parts(sink, limit)
    callbacks = {
        name: getattr(parts, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
            if parts.pending:
                batch, parts.pending = parts.pending, []
                await run_in_threadpool(sink.write, batch)
        parser.finalize()
        if not parts.found:
            raise invalid(FIELD, "field required: send the file as multipart field `file`")
        if not parts.complete:
            raise invalid("body", "malformed multipart body: the `file` part is not terminated by a boundary")
        await run_in_threadpool(sink.commit)
    except BaseException as exc:
        sink.discard()  # quick close + unlink; done inline so it also runs on cancellation
        # FormParserError is the base class: parse errors, and also a boundary the parser refuses (over 256 bytes).
        if isinstance(exc, FormParserError):
            raise invalid("body", f"malformed multipart body: {exc}") from None
        raise
    return Received(parts.name, sink.size, sink.digest.hexdigest(), parts.content_type)
