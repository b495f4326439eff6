"""docs/API.md is the repository's API reference: it names every route the gateway's OpenAPI documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from longrun_common.settings import Settings
from longrun_gateway.app import create_app

API_MD = Path(__file__).resolve().parents[1] / "docs" / "API.md"


@pytest.mark.unit
def test_every_openapi_operation_is_in_the_reference() -> None:
    spec = create_app(Settings()).openapi()
    documented = set(re.findall(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`?\s]*)", API_MD.read_text()))
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
                  if method in {"get", "post", "delete", "put", "patch"}}
    assert operations - documented == set(), "routes missing from docs/API.md"
    gateway_routes = {(m, p) for m, p in documented if not p.endswith("/events")}  # SSE is the hub's
    assert gateway_routes - operations == set(), "docs/API.md names routes the gateway does not have"


@pytest.mark.unit
def test_every_setting_is_in_the_reference() -> None:
    """docs/API.md's Settings table names every LONGRUN_* setting, and only those (the README's tables are
    checked by tests/test_commands.py)."""
    names = {f"LONGRUN_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"^\| `(LONGRUN_[A-Z0-9_]+)` \|", API_MD.read_text(), re.MULTILINE))
    assert names - documented == set(), "settings missing from docs/API.md"
    assert documented - names == set(), "docs/API.md documents settings that do not exist"
