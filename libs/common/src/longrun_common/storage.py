"""Where uploaded files live: `{storage_dir}/{tenant}/{file_id}` — tasks take ids, never paths."""

from __future__ import annotations

import re
from pathlib import Path

from .settings import Settings

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def file_path(settings: Settings, tenant: str, file_id: str) -> Path:
    """The path of one stored file; ids and tenants are checked so a crafted id cannot escape the folder."""
    if not _SAFE.match(tenant) or not _SAFE.match(file_id) or file_id in {".", ".."} or tenant in {".", ".."}:
        raise ValueError(f"invalid file id {file_id!r}")
    return Path(settings.storage_dir) / tenant / file_id
