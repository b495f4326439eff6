"""Schemathesis over the gateway's own OpenAPI, against a real stack: a uvicorn gateway process, a Celery worker
process, Redis and SQLite. Every documented operation (OPTIONS included) gets a fixed number of generated
requests, valid and invalid, from a fixed seed; any 5xx, undocumented status, wrong content type, body that
does not match its schema, or missing documented header fails the test.

Bounded: FUZZ_EXAMPLES per operation and generation mode, no shrinking (a failure prints the request as
found), derandomized so every run sends the same requests.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from longrun_common.db import migrate
from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from longrun_gateway.openapi_catalog import CatalogTask, typed_document
from longrun_worker import tasks  # registers the built-in tasks, as the fixture's worker does
from longrun_worker.api import REGISTRY
from tests.support.processes import Service, free_port, python_module, service_env

pytestmark = pytest.mark.integration

# Per operation and mode. `GATEWAY_FUZZ_EXAMPLES=200 pytest tests/test_fuzz_gateway.py` digs deeper by hand.
FUZZ_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "12"))
API_KEY = "fuzz-" + "k3Q9vX2mZ7pL4wN8rT1yB6cH5dF0gJsA"  # development env: any key works; a realistic one anyway
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def gateway_url(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway and a worker on their own prefix and SQLite file, seeded with jobs and a dead letter."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    database_url = f"sqlite:///{tmp / 'longrun.db'}"
    migrate(Settings(database_url=database_url))
    port = free_port()
    env = service_env({
        "LONGRUN_REDIS_URL": redis_url,
        "LONGRUN_DATABASE_URL": database_url,
        "LONGRUN_KEY_PREFIX": f"fz{uuid.uuid4().hex[:10]}",
        "LONGRUN_API_KEYS": f"fuzz:{API_KEY}",
        "LONGRUN_STORAGE_DIR": str(tmp / "files"),
        "LONGRUN_GATEWAY_PORT": str(port),
        "LONGRUN_HUB_PORT": str(free_port()),
    })
    worker = Service("worker", python_module("longrun_worker", "--hostname", f"fuzz-{uuid.uuid4().hex[:6]}@%h",
                                             "--concurrency", "1"), env, tmp / "worker.log")
    gateway = Service("gateway", python_module("longrun_gateway"), env, tmp / "gateway.log", port)
    try:
        worker.start(ready_path=None)
        worker.wait_log("ready.", timeout=60)  # it has published the task catalog
        gateway.start(timeout=60)
        if httpx.get(f"{gateway.url}/openapi.json").json() != json.loads(json.dumps(DOCUMENT)):  # no 300k-line diff
            pytest.fail("the running gateway serves another OpenAPI document than the one this module fuzzes")
        _seed(gateway.url)
        yield gateway.url
    finally:
        gateway.stop()
        worker.stop()


def _seed(url: str) -> None:
    """Jobs in each kind of state and one dead letter, so list and detail responses carry real items."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        ids = [client.post("/v1/jobs", json=body).raise_for_status().json()["id"] for body in (
            {"task": "demo.steps", "args": {"steps": 2}},
            {"task": "files.checksum", "args": {"file_id": str(uuid.uuid4())}},  # fails: a dead letter
            {"task": "demo.steps", "args": {"steps": 1, "delay": 60}},  # running while fuzzed (concurrency 1)
        )]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get("/v1/dead-letters").json()["items"] and \
                    client.get(f"/v1/jobs/{ids[0]}").json()["status"] == "succeeded":
                return
            time.sleep(0.2)
        raise TimeoutError("the seeded jobs did not finish")


# The document is generated from the gateway's code at import (schemathesis' lazy fixture loader does not run on
# this pytest), typed by the catalog the fixture's worker registers (the built-in tasks, in name order, as the
# gateway reads them); the fixture checks that the running gateway serves exactly this document.
# Only the built-in tasks: other test modules register tasks of their own in this process's registry.
_BUILT_IN = [d.spec() for d in REGISTRY.values() if d.fn.__module__.startswith(tasks.__name__ + ".")]
_CATALOG = [CatalogTask(spec.name, spec.description, spec.args_schema, "")
            for spec in sorted(_BUILT_IN, key=lambda spec: spec.name)]
DOCUMENT = typed_document(create_app(Settings(env="development", api_keys="", token_secret="")).openapi(), _CATALOG)
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=FUZZ_EXAMPLES, deterministic=True)


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_gateway_matches_its_openapi(case: schemathesis.Case, gateway_url: str) -> None:
    case.call_and_validate(base_url=gateway_url, headers=AUTH, checks=CHECKS, timeout=15)
