"""The OpenAPI document says what the gateway does: one error schema, per-route statuses, OPTIONS and Allow."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_support import DEV

from longrun_common.settings import Settings
from longrun_gateway.app import create_app

pytestmark = pytest.mark.integration

ERROR_REF = "#/components/schemas/Error"


def document() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


@pytest.mark.unit
def test_every_error_is_the_one_envelope() -> None:
    schema = document()
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's {"detail": [...]} is gone
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for method, path, op in operations(schema):
        for status, response in op["responses"].items():
            if int(status) < 400 or (path == "/readyz" and status == "503"):
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref == ERROR_REF, (method, path, status)
        if path.startswith("/v1/") and method != "options":
            assert "401" in op["responses"], (method, path)
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
            assert op["security"] == [{"apiKey": []}]


@pytest.mark.unit
def test_routes_document_their_own_statuses_and_headers() -> None:
    paths = document()["paths"]
    submit = paths["/v1/jobs"]["post"]["responses"]
    assert set(submit) == {"200", "202", "401", "409", "413", "422", "429", "503"}
    assert submit["202"]["headers"]["Location"]["required"] and submit["200"]["headers"]["Location"]["required"]
    assert submit["429"]["headers"]["Retry-After"]["required"]
    assert submit["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobView")
    assert set(paths["/v1/jobs/{job_id}"]["get"]["responses"]) == {"200", "401", "404", "422", "503"}
    assert set(paths["/v1/dead-letters/{letter_id}/requeue"]["post"]["responses"]) == {"202", "401", "404", "409",
                                                                                         "503"}
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=1.0.0; charset=utf-8"]
    assert "GET, POST, OPTIONS" in paths["/v1/jobs"]["options"]["responses"]["204"]["headers"]["Allow"]["description"]


async def test_options_and_405_list_every_method_of_the_path(lite_client: httpx.AsyncClient) -> None:
    schema = document()
    for path, ops in schema["paths"].items():
        concrete = path.replace("{job_id}", "x").replace("{file_id}", "x").replace("{letter_id}", "x")
        documented = {m.upper() for m in ops if m != "options"}
        response = await lite_client.options(concrete)
        assert response.status_code == 204 and response.content == b"", path
        allowed = response.headers["allow"].split(", ")
        assert allowed[-1] == "OPTIONS" and documented <= set(allowed), (path, allowed)
        if path != "/v1/dead-letters/requeue":  # which is also the GET/DELETE of /v1/dead-letters/{letter_id}
            assert set(allowed) == documented | {"OPTIONS"}, (path, allowed)
    # /v1/jobs has POST and GET in two routes; Starlette alone answered `Allow: POST`.
    response = await lite_client.put("/v1/jobs", headers=DEV)
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST, OPTIONS"
    body = response.json()["error"]
    assert body["code"] == "method_not_allowed" and body["details"] == {"allowed": ["GET", "POST", "OPTIONS"]}
    response = await lite_client.delete("/v1/jobs/x/cancel", headers=DEV)
    assert response.status_code == 405 and response.headers["allow"] == "POST, OPTIONS"


async def test_metrics_content_type_is_the_documented_one(lite_client: httpx.AsyncClient) -> None:
    documented = document()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    response = await lite_client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"] in documented
