"""Every error status the gateway promises, in the one envelope, and never a 500 for bad input."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import DEV, error_of, seed_catalog, serve, serve_seeded, submit
from sqlmodel import Session, col, update

from longrun_common.db import create_db_engine
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

V1_ROUTES = [
    ("GET", "/v1/tasks"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", f"/v1/jobs/{uuid.uuid4()}"),
    ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel"),
    ("POST", f"/v1/jobs/{uuid.uuid4()}/stream-token"),
    ("POST", "/v1/stream-token"),
    ("POST", "/v1/files"),
    ("GET", f"/v1/files/{uuid.uuid4()}"),
    ("GET", "/v1/dead-letters"),
    ("GET", f"/v1/dead-letters/{uuid.uuid4()}"),
    ("POST", f"/v1/dead-letters/{uuid.uuid4()}/requeue"),
    ("POST", "/v1/dead-letters/requeue"),
    ("DELETE", f"/v1/dead-letters/{uuid.uuid4()}"),
]


BAD_KEYS = [
    ({}, "missing Authorization header"),
    ({"Authorization": "Basic ZGV2OmRldi1rZXk="}, "malformed Authorization header"),
    ({"Authorization": "Bearer"}, "malformed Authorization header"),
    ({"Authorization": "Bearer not-a-key"}, "invalid API key"),
    ({"Authorization": "Bearer dev-key-but-longer"}, "invalid API key"),
]


async def test_every_v1_route_needs_an_api_key(lite_client: httpx.AsyncClient) -> None:
    # A malformed body too: authentication is checked before the body is read.
    for (method, path), (headers, fragment) in itertools.product(V1_ROUTES, BAD_KEYS):
        response = await lite_client.request(method, path, headers=headers, content=b"{not json")
        assert response.status_code == 401, (method, path, headers, response.text)
        error = error_of(response)
        assert error["code"] == "unauthorized" and fragment in error["message"]
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_scheme_is_case_insensitive(lite_client: httpx.AsyncClient) -> None:
    assert (await lite_client.get("/v1/tasks", headers={"Authorization": "bearer dev-key"})).status_code == 200


async def test_unknown_route_and_method_use_the_envelope(lite_client: httpx.AsyncClient) -> None:
    response = await lite_client.get("/v2/nothing", headers=DEV)
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = await lite_client.put("/v1/jobs", headers=DEV)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


BAD_JOB_BODIES = [
    (b"", "body: a JSON object is required"),
    (b"{not json", "body: invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"[1, 2]", "body: must be a JSON object, got list"),
    (b'"demo.steps"', "body: must be a JSON object, got str"),
    (b'{"task": "demo.steps", "args": {"steps": NaN}}', "body: invalid JSON: NaN is not valid JSON"),
    (b'{"args": {"steps": 1}}', "task: Field required"),
    (b'{"task": 5}', "task: Input should be a valid string"),
    (b'{"task": "demo.steps", "args": [1]}', "args: Input should be a valid dictionary"),
    (b'{"task": "demo.steps", "args": {"steps": 1}, "priority": "5"}', "priority: Input should be a valid integer"),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "priority": true}',
        "priority: Input should be a valid integer",
    ),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "priority": 10}',
        "priority: Input should be less than or equal to 9",
    ),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "priority": -1}',
        "priority: Input should be greater than or equal to 0",
    ),
    (b'{"task": "demo.steps", "args": {"steps": 1}, "colour": "red"}', "colour: Extra inputs are not permitted"),
    (b'{"task": "demo.steps", "args": {"steps": 1}, "queue": "no spaces"}', "queue: String should match pattern"),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "time_limit": 0}',
        "time_limit: 0 is outside the allowed range of 1 to 3600 seconds",
    ),
    (b'{"task": "demo.steps", "args": {"steps": 1}, "time_limit": "soon"}', "time_limit: Input should be a valid"),
    # The adversarial run's limits: accepted once, they stranded or looped jobs in the worker.
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "time_limit": 0.001}',
        "time_limit: 0.001 is outside the allowed range of 1 to 3600 seconds",
    ),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "time_limit": 5e-324}',
        "time_limit: 4.94066e-324 is outside the allowed range of 1 to 3600 seconds",
    ),
    (
        b'{"task": "demo.steps", "args": {"steps": 1}, "soft_time_limit": 0.5}',
        "soft_time_limit: 0.5 is outside the allowed range of 1 to 3600 seconds",
    ),
    (b'{"task": "demo.steps", "args": {"steps": 0}}', "args.steps: 0 is less than the minimum of 1"),
    (b'{"task": "demo.steps", "args": {}}', "args.steps: 'steps' is a required property"),
    (b'{"task": "demo.steps", "args": {"steps": 2, "speed": 9}}', "args: Additional properties are not allowed"),
    (
        b'{"task": "demo.steps", "args": {"steps": 2}, "time_limit": 3601}',
        "time_limit: 3601 is outside the allowed range of 1 to 3600 seconds",
    ),
    (
        b'{"task": "demo.steps", "args": {"steps": 2}, "soft_time_limit": 900}',
        "soft_time_limit: soft_time_limit (900) must be below time_limit (600)",
    ),
    (b"[" * 5000 + b"]" * 5000, "body: JSON nested deeper than 64 levels"),
]


async def test_bad_job_bodies_are_422_naming_the_field(lite_client: httpx.AsyncClient) -> None:
    headers = {**DEV, "Content-Type": "application/json"}
    for body, message in BAD_JOB_BODIES:
        response = await lite_client.post("/v1/jobs", content=body, headers=headers)
        assert response.status_code == 422, (body[:80], response.text)
        error = error_of(response)
        assert error["code"] == "validation_error"
        assert error["message"].startswith(message), (body[:80], error)
        assert isinstance(error["details"], list) and error["details"][0]["field"] == message.split(":")[0]
    assert (await lite_client.get("/v1/jobs", headers=DEV)).json()["items"] == []  # none was accepted


async def test_unknown_task_lists_known_tasks(lite_client: httpx.AsyncClient) -> None:
    response = await lite_client.post("/v1/jobs", json={"task": "nope", "args": {}}, headers=DEV)
    assert response.status_code == 422
    error = error_of(response)
    assert error["message"] == "task: unknown task 'nope'; known tasks: demo.steps, reports.build"
    assert error["details"][0]["known"] == ["demo.steps", "reports.build"]


async def test_unknown_queue_is_422_naming_the_allowed_queues(lite_client: httpx.AsyncClient) -> None:
    """Found by review: a job for a queue no worker consumes was accepted and never ran."""
    response = await lite_client.post(
        "/v1/jobs", json={"task": "demo.steps", "args": {"steps": 1}, "queue": "nope"}, headers=DEV
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["message"] == "queue: unknown queue 'nope'; allowed queues: default, high, low"
    assert error["details"][0]["allowed"] == ["default", "high", "low"]
    assert (await lite_client.get("/v1/jobs", headers=DEV)).json()["items"] == []
    for queue in ("default", "high", "low"):
        assert (await submit(lite_client, queue=queue))["queue"] == queue


async def test_several_arg_problems_are_all_reported(lite_client: httpx.AsyncClient) -> None:
    body = {"task": "demo.steps", "args": {"steps": "x", "delay": 100}}
    error = error_of(await lite_client.post("/v1/jobs", json=body, headers=DEV))
    fields = [d["field"] for d in error["details"]]
    assert fields == ["args.delay", "args.steps"]
    assert "args.delay: 100 is greater than the maximum of 60" in error["message"]


async def test_non_uuid_ids_are_404(lite_client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", "/v1/jobs/123"),
        ("GET", "/v1/jobs/" + "9" * 300),
        ("GET", "/v1/jobs/x?wait=1"),
        ("GET", "/v1/files/..%2F..%2Fetc"),
        ("GET", "/v1/dead-letters/x"),
        ("POST", "/v1/jobs/x/cancel"),
        ("POST", "/v1/jobs/x/stream-token"),
        ("POST", "/v1/dead-letters/x/requeue"),
        ("DELETE", "/v1/dead-letters/x"),
    ]:
        response = await lite_client.request(method, path, headers=DEV)
        assert response.status_code == 404, (path, response.text)
        assert error_of(response)["code"] == "not_found"


async def test_bad_list_queries_are_422(lite_client: httpx.AsyncClient) -> None:
    cases = [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=eyJub3QiOiJhIGN1cnNvciJ9", "cursor"),
    ]
    requests = [(path, query, field) for path in ("/v1/jobs", "/v1/dead-letters") for query, field in cases]
    requests.append(("/v1/jobs", "status=bogus", "status"))
    for path, query, field in requests:
        response = await lite_client.get(f"{path}?{query}", headers=DEV)
        assert response.status_code == 422, (path, query, response.text)
        assert error_of(response)["message"].startswith(f"{field}: "), (path, query)


BAD_LONG_POLLS = [
    ("wait=0", "wait"),
    ("wait=-1", "wait"),
    ("wait=61", "wait"),
    ("wait=soon", "wait"),
    ("wait=nan", "wait"),
    ("wait=inf", "wait"),
    ("wait=1&after_seq=-1", "after_seq"),
    ("wait=1&after_seq=x", "after_seq"),
]


async def test_bad_long_poll_queries_are_422(lite_client: httpx.AsyncClient) -> None:
    job = await submit(lite_client)
    for query, field in BAD_LONG_POLLS:
        response = await lite_client.get(f"/v1/jobs/{job['id']}?{query}", headers=DEV)
        assert response.status_code == 422, (query, response.text)
        assert error_of(response)["message"].startswith(f"{field}: "), query


async def test_declared_body_over_limit_is_413(lite_client: httpx.AsyncClient) -> None:
    big = b'{"task": "demo.steps", "args": {"pad": "' + b"x" * (1024 * 1024) + b'"}}'
    response = await lite_client.post("/v1/jobs", content=big, headers={**DEV, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


async def test_streamed_body_over_limit_is_413(lite_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"task": "demo.steps", "args": {"pad": "'
        for _ in range(40):
            yield b"x" * 32 * 1024  # 1.25 MiB in all, no Content-Length
        yield b'"}}'

    response = await lite_client.post("/v1/jobs", content=chunks(), headers=DEV)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert error_of(response)["details"] == {"limit": 1024 * 1024}


async def test_bug_is_a_json_500_without_internals(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret connection string postgres://u:p@db")

    async with serve(app, raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    error = error_of(response)
    assert error == {"code": "internal_error", "message": "internal server error", "details": None}
    assert "secret" not in response.text


async def test_database_down_is_503_naming_the_database(redis_url: str, key_prefix: str) -> None:
    settings = Settings(
        redis_url=redis_url, key_prefix=key_prefix, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    )
    async with serve(create_app(settings)) as client:
        for method, path in [("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{uuid.uuid4()}"), ("GET", "/v1/tasks")]:
            response = await client.request(method, path, headers=DEV)
            assert response.status_code == 503, response.text
            error = error_of(response)
            assert error["details"] == {"dependency": "database"} and "database" in error["message"]
        response = await client.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 1}}, headers=DEV)
        assert response.status_code == 503 and error_of(response)["details"] == {"dependency": "database"}
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("error: ")
        assert ready.json()["checks"]["redis"] == "ok"
        assert (await client.get("/metrics")).status_code == 200  # a scrape survives the outage
        assert "longrun_dead_letters_scrape_ok 0.0" in (await client.get("/metrics")).text


async def test_redis_down_jobs_are_accepted_and_read_from_sql(sqlite_url: str, tmp_path: object) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=sqlite_url,
        key_prefix="down",
        api_keys="dev:dev-key",
    )
    async with serve_seeded(settings) as client:
        # Accepted: the SQL row is the record; the reconciler publishes once Redis is back.
        job = await submit(client)
        assert job["status"] == "queued" and job["seq"] == 0
        response = await client.get(f"/v1/jobs/{job['id']}", headers=DEV)
        assert response.status_code == 200 and response.json()["id"] == job["id"]
        listed = (await client.get("/v1/jobs", headers=DEV)).json()["items"]
        assert [item["id"] for item in listed] == [job["id"]]
        # A long-poll degrades to re-reading SQL and still answers at its deadline.
        start = time.monotonic()
        response = await client.get(f"/v1/jobs/{job['id']}?wait=1.2&after_seq=0", headers=DEV)
        assert response.status_code == 200 and 1.0 < time.monotonic() - start < 3
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("error: ")


async def test_redis_down_cancel_is_stored_and_accepted(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The cancel lives in SQL: a worker drops a queued job whose cancel is set, the reaper ends a running one."""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=sqlite_url,
        key_prefix="down",
        api_keys="dev:dev-key",
    )
    engine = create_db_engine(settings)
    seed_catalog(engine)
    async with serve(create_app(settings)) as client:
        queued, running = await submit(client), await submit(client)
        with Session(engine) as session:
            session.execute(update(Job).where(col(Job.id) == running["id"]).values(status="running"))
            session.commit()
        for job, status in [(queued, "queued"), (running, "running")]:
            with caplog.at_level(logging.WARNING, logger="longrun_gateway"):
                response = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=DEV)
            assert response.status_code == 202, response.text
            view = response.json()
            assert view["id"] == job["id"] and view["status"] == status and view["cancel_requested"] is True
            with Session(engine) as session:
                row = session.get(Job, job["id"])
                assert row is not None and row.cancel_requested_at is not None
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("longrun_gateway")]
        assert any(queued["id"] in m and "when a worker picks it up" in m for m in messages), messages
        assert any(running["id"] in m and "redis" in m.lower() for m in messages), messages
    engine.dispose()


UNSTORABLE = [
    (b'{"task": "reports.build", "args": {"x": 1e400}}', "body: invalid JSON: number 1e400 is out of range"),
    (b'{"task": "reports.build", "args": {"x": "\\ud800"}}', "args.x: text contains an unpaired surrogate"),
    (b'{"task": "reports.build", "args": {"\\udfff": 1}}', "args.\\udfff: text contains an unpaired surrogate"),
    (b'{"task": "reports.build", "args": {"x": ["nul\\u0000"]}}', "args.x[0]: text must not contain NUL"),
    (b'{"task": "a\\u0000b", "args": {}}', "task: text must not contain NUL"),
    (b'{"task": "a\\nb", "args": {}}', "task: String should match pattern"),
]
HOSTILE_FILTERS = [
    "/v1/jobs?task=a%00b",
    "/v1/dead-letters?task=a%00b",
    "/v1/dead-letters?error_type=a%01b",
    "/v1/jobs?task=" + "t" * 129,
    "/v1/jobs?cursor=" + "A" * 600,
]


async def test_values_no_database_can_hold_are_422(client: httpx.AsyncClient) -> None:
    """Found by probing: each of these was a 500 (JSON encoder or PostgreSQL refusing the value)."""
    for body, message in UNSTORABLE:
        response = await client.post("/v1/jobs", content=body, headers=DEV)
        assert response.status_code == 422, (body, response.text)
        assert error_of(response)["message"].startswith(message), (body, response.text)
    for path in HOSTILE_FILTERS:
        response = await client.get(path, headers=DEV)
        assert response.status_code == 422, (path, response.text)
        error_of(response)
