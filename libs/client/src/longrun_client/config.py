"""Where the client connects and with which key: arguments, else `LONGRUN_URL` / `LONGRUN_API_KEY`, else a
profile in `~/.config/longrun/config.toml` (or `$LONGRUN_CONFIG`):

    [default]
    url = "http://127.0.0.1:8000"
    api_key = "dev-key"

    [prod]
    url = "https://longrun.example.com"
    api_key = "lr_…"

`LONGRUN_PROFILE` (or the CLI's `--profile`) picks a section; the default section is `default`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    explicit = os.environ.get("LONGRUN_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "longrun" / "config.toml"


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str | None

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None, profile: str | None = None) -> Config:
        section = _profile(profile or os.environ.get("LONGRUN_PROFILE") or "default", explicit=profile is not None)
        resolved_url = url or os.environ.get("LONGRUN_URL") or section.get("url") or DEFAULT_URL
        key = api_key or os.environ.get("LONGRUN_API_KEY") or section.get("api_key")
        return cls(resolved_url.rstrip("/"), key)


def _profile(name: str, explicit: bool) -> dict[str, str]:
    path = config_path()
    if not path.exists():
        if explicit:
            raise ValueError(f"profile {name!r} asked for, but {path} does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    section = data.get(name)
    if section is None:
        if explicit or name != "default":
            raise ValueError(f"{path} has no [{name}] profile (it has: {', '.join(data) or 'none'})")
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [{name}] must be a table with url and api_key")
    return {k: str(v) for k, v in section.items()}
