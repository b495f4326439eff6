"""`files.checksum`: SHA-256 of an uploaded file, with progress by bytes."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from ..api import task
from ..context import JobContext

CHUNK = 1024 * 1024


class ChecksumArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=64, description="id returned by POST /v1/files")


class ChecksumResult(BaseModel):
    file_id: str
    name: str
    sha256: str
    size: int


@task("files.checksum", args=ChecksumArgs, retries=3, soft_time_limit=600, time_limit=660)
def checksum(ctx: JobContext, args: ChecksumArgs) -> ChecksumResult:
    """Stream an uploaded file through SHA-256."""
    stored = ctx.file(args.file_id)
    ctx.progress.start(total=stored.size, stage="hashing", message=stored.name)
    digest = hashlib.sha256()
    size = 0
    with stored.path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            ctx.progress.advance(len(chunk))
    return ChecksumResult(file_id=stored.id, name=stored.name, sha256=digest.hexdigest(), size=size)
