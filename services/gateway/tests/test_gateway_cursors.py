"""Crafted pagination cursors: any cursor that does not decode into a valid position is a 422, never a 500."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from gateway_support import DEV, error_of

pytestmark = pytest.mark.integration


def craft(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_CURSORS = [
    # The adversarial run's cursor: +14:00 moves year 1 before datetime's range (OverflowError).
    "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwgIngiXQ",
    craft(["9999-12-31T23:59:59-14:00", "x"]),  # past the end of the range
    craft(["2026-01-01T00:00:00+00:00", "a\x00b"]),  # NUL: PostgreSQL text cannot hold it
    craft(["2026-01-01T00:00:00+00:00", "x" * 65]),
    craft(["2026-01-01T00:00:00+00:00", 7]),
    craft(["2026-01-01T00:00:00+00:00"]),
    craft({"at": "2026-01-01", "id": "x"}),
    craft([[[[[]]]], "x"]),
    craft(["2026-13-01T00:00:00", "x"]),
    "A" * 601,
]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
async def test_crafted_cursors_are_422(client: httpx.AsyncClient, path: str) -> None:
    for cursor in BAD_CURSORS:
        response = await client.get(path, params={"cursor": cursor}, headers=DEV)
        assert response.status_code == 422, (cursor, response.text)
        assert error_of(response)["message"].startswith("cursor: "), cursor


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
async def test_extreme_but_valid_cursors_are_empty_pages(client: httpx.AsyncClient, path: str) -> None:
    for at in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00-14:00"):
        response = await client.get(path, params={"cursor": craft([at, "x"])}, headers=DEV)
        assert response.status_code == 200, (at, response.text)
