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
def test_every_setting_is_in_the_reference_and_the_readme() -> None:
    """docs/API.md's Settings table and the README's Configuration tables name every LONGRUN_* setting."""
    names = {f"LONGRUN_{name.upper()}" for name in Settings.model_fields}
    table_rows = re.compile(r"^\| `(LONGRUN_[A-Z0-9_]+)` \|", re.MULTILINE)
    assert names - set(table_rows.findall(API_MD.read_text())) == set(), "settings missing from docs/API.md"
    readme = API_MD.parents[1] / "README.md"
    assert names - set(table_rows.findall(readme.read_text())) == set(), "settings missing from README.md"
    documented = set(table_rows.findall(API_MD.read_text()))
    assert documented - names == set(), "docs/API.md documents settings that do not exist"
