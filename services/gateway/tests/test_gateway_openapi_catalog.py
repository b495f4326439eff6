"""The served OpenAPI document follows the task catalog: a job body is a union over the tasks, discriminated by
`task`, each with its own args schema — and it changes when the catalog does."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_support import DEMO_SCHEMA
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import Engine
from sqlmodel import Session

from longrun_common.models import TaskRecord, utcnow
from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from longrun_gateway.openapi_catalog import CatalogDocument

pytestmark = pytest.mark.integration


def body_validator(doc: dict[str, Any], path: str) -> Draft202012Validator:
    """A validator for the JSON request body of POST `path`, resolving refs inside `doc`."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
    pointer = f"/paths/{path.replace('/', '~1')}/post/requestBody/content/application~1json/schema"
    return Draft202012Validator({"$ref": f"urn:doc#{pointer}"}, registry=registry)


async def test_the_job_body_is_typed_per_task(lite_client: httpx.AsyncClient) -> None:
    doc = (await lite_client.get("/openapi.json")).json()
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"] == {"propertyName": "task", "mapping": {
        "demo.steps": "#/components/schemas/task.demo.steps.job",
        "reports.build": "#/components/schemas/task.reports.build.job"}}
    schemas = doc["components"]["schemas"]
    assert schemas["task.demo.steps.args"] == DEMO_SCHEMA
    assert schemas["task.demo.steps.job"]["properties"]["task"]["const"] == "demo.steps"

    single = body_validator(doc, "/v1/jobs")
    assert single.is_valid({"task": "demo.steps", "args": {"steps": 3}, "queue": "high"})
    assert not single.is_valid({"task": "demo.steps", "args": {"steps": 0}})  # demo's own schema applies
    assert not single.is_valid({"task": "demo.steps", "args": {"rows": []}})
    assert not single.is_valid({"task": "nope", "args": {}})
    batch = body_validator(doc, "/v1/jobs:batch")
    assert batch.is_valid({"jobs": [{"task": "demo.steps", "args": {"steps": 1}}, {"task": "reports.build"}]})
    assert not batch.is_valid({"jobs": [{"task": "demo.steps", "args": {"steps": "x"}}]})


@pytest.mark.unit
def test_without_a_catalog_the_document_is_generic() -> None:
    body = create_app(Settings()).openapi()["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["args"]["type"] == "object"


def test_the_document_follows_catalog_changes(sqlite_settings: Settings, seeded_lite: Engine) -> None:
    app = create_app(sqlite_settings)
    document = CatalogDocument(app.openapi, lambda: seeded_lite, ttl=0)
    first = document.get()
    assert document.get() is first  # unchanged catalog: the same document, not rebuilt
    nested = {"type": "object", "properties": {"point": {"$ref": "#/$defs/Point"}},
              "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
    with Session(seeded_lite) as session:
        session.add(TaskRecord(name="geo/plot", args_schema=nested, policy={}, updated_at=utcnow()))
        session.commit()
    second = document.get()
    mapping = second["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "discriminator"]["mapping"]
    assert mapping["geo/plot"] == "#/components/schemas/task.geo_plot.job"
    # The task's $defs became components of their own, so its refs resolve inside the document.
    assert second["components"]["schemas"]["task.geo_plot.args"]["properties"]["point"] == {
        "$ref": "#/components/schemas/task.geo_plot.args.Point"}
    validator = body_validator(second, "/v1/jobs")
    assert validator.is_valid({"task": "geo/plot", "args": {"point": {"x": 1}}})
    assert not validator.is_valid({"task": "geo/plot", "args": {"point": {"x": "one"}}})


@pytest.fixture
def seeded_lite(sqlite_settings: Settings) -> Any:
    from gateway_support import seed_catalog

    from longrun_common.db import create_db_engine, ensure_schema

    ensure_schema(sqlite_settings)
    engine = create_db_engine(sqlite_settings)
    seed_catalog(engine)
    yield engine
    engine.dispose()
