"""Routing at submit: a job goes to the queue it names, else its task's declared queue; only configured queues
(LONGRUN_QUEUES) are accepted, and a 422 names them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import DEV, error_of, serve_seeded

from longrun_common.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def routed(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose configured queues are `default` and `reports` (not `low`, reports.build's default)."""
    settings = sqlite_settings.model_copy(update={"queues": "default,reports"})
    async with serve_seeded(settings) as http:
        yield http


async def test_a_job_names_a_configured_queue(routed: httpx.AsyncClient) -> None:
    response = await routed.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 1}, "queue": "reports",
                                                   "priority": 9}, headers=DEV)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == "reports" and response.json()["priority"] == 9


async def test_an_unknown_queue_is_refused_naming_the_configured_ones(routed: httpx.AsyncClient) -> None:
    response = await routed.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 1}, "queue": "high"},
                                 headers=DEV)
    assert response.status_code == 422
    error = error_of(response)
    assert error["message"] == "queue: unknown queue 'high'; allowed queues: default, reports"
    assert error["details"][0]["field"] == "queue" and error["details"][0]["allowed"] == ["default", "reports"]


async def test_the_tasks_default_queue_is_used_when_the_job_names_none(lite_client: httpx.AsyncClient) -> None:
    response = await lite_client.post("/v1/jobs", json={"task": "reports.build", "args": {}}, headers=DEV)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == "low"  # REPORT_POLICY's queue; demo.steps declares `default`
    named = await lite_client.post("/v1/jobs", json={"task": "reports.build", "args": {}, "queue": "high"},
                                   headers=DEV)
    assert named.json()["queue"] == "high"


async def test_a_task_default_queue_no_worker_consumes_is_refused(routed: httpx.AsyncClient) -> None:
    response = await routed.post("/v1/jobs", json={"task": "reports.build", "args": {}}, headers=DEV)
    assert response.status_code == 422
    message = error_of(response)["message"]
    assert message == "queue: task 'reports.build' defaults to queue 'low', which no worker consumes here; " \
                      "name one of: default, reports"
    batch = await routed.post("/v1/jobs:batch", json={"jobs": [{"task": "demo.steps", "args": {"steps": 1}},
                                                               {"task": "reports.build", "args": {}}]}, headers=DEV)
    assert batch.status_code == 422
    assert [d["field"] for d in error_of(batch)["details"]] == ["jobs[1].queue"]
