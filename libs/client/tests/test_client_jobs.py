"""The SDK against the real stack: submit, get, list, cancel, wait; errors; idempotent retries; 429 retries."""

from __future__ import annotations

import httpx
import pytest
from clientstack import Stack

from longrun_client import AsyncClient, Client, Conflict, InvalidInput, NotFound, RetryPolicy, Unauthorized, Unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # the first test also starts the stack


def test_submit_get_list_wait(client: Client) -> None:
    job = client.submit("demo.steps", {"steps": 5, "delay": 0.01})
    assert job.status == "queued" and job.task == "demo.steps" and job.stream is not None
    assert client.get(job.id).id == job.id
    done = client.wait(job.id, timeout=60)
    assert done.status == "succeeded" and done.result["steps_run"] == 5 and done.progress.percent == 100.0
    others = [client.submit("demo.steps", {"steps": 1}) for _ in range(4)]
    listed = [j.id for j in client.iter_jobs(task="demo.steps", page_size=2)]  # 3 pages: the cursor is followed
    assert listed == [j.id for j in reversed([job, *others])]


def test_cancel_a_queued_job(client: Client) -> None:
    blocker = [client.submit("demo.steps", {"steps": 600, "delay": 0.05}) for _ in range(2)]  # both worker slots
    queued = client.submit("demo.steps", {"steps": 3})
    client.cancel(queued.id)
    assert client.wait(queued.id, timeout=60).status == "cancelled"
    for job in blocker:
        client.cancel(job.id)
    assert {client.wait(j.id, timeout=60).status for j in blocker} == {"cancelled"}


def test_errors_carry_the_api_code_and_message(stack: Stack, client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.get("00000000-0000-0000-0000-000000000000")
    assert missing.value.status == 404 and missing.value.code and "job" in missing.value.message
    with pytest.raises(InvalidInput) as invalid:
        client.submit("demo.steps", {"steps": "many"})
    assert invalid.value.status == 422 and "steps" in invalid.value.message
    with pytest.raises(Conflict):
        client.submit("demo.steps", {"steps": 1}, idempotency_key="same-key")
        client.submit("demo.steps", {"steps": 2}, idempotency_key="same-key")
    with stack.client("wrong-key") as stranger, pytest.raises(Unauthorized) as refused:
        stranger.tasks()
    assert refused.value.status == 401 and refused.value.code


def use_transport(client: Client, transport: httpx.BaseTransport) -> None:
    client.http.close()
    client.http = httpx.Client(base_url=client.config.url, headers=client._headers(), transport=transport)


class LosesFirstAnswer(httpx.BaseTransport):
    """Delivers every request, but the first submission's answer is lost on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.submissions = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.submissions += 1
            if self.submissions == 1:
                response.close()
                raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_retried_submit_never_makes_two_jobs(client: Client) -> None:
    flaky = LosesFirstAnswer()
    use_transport(client, flaky)
    before = {j.id for j in client.iter_jobs()}
    job = client.submit("demo.steps", {"steps": 1})
    assert flaky.submissions == 2  # the lost answer was retried…
    assert {j.id for j in client.iter_jobs()} - before == {job.id}  # …with the same key: one job


async def test_async_client_submits_and_follows(stack: Stack, api_key: str) -> None:
    async with AsyncClient(stack.gateway.url, api_key) as client:
        job = await client.submit("demo.steps", {"steps": 10, "delay": 0.02})
        events = [event async for event in client.follow(job.id)]
        assert events[-1].status == "succeeded" and events[-1].done
        assert [j.id async for j in client.iter_jobs(status="succeeded")] == [job.id]


def test_429_and_503_are_retried_after_retry_after() -> None:
    answers = iter([
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"code": "rate_limited", "message": "slow"}}),
        httpx.Response(503, json={"error": {"code": "unavailable", "message": "redis is down"}}),
        httpx.Response(202, json={"id": "j1", "task": "demo.steps", "status": "queued"}),
    ])
    keys: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return next(answers)

    with Client("http://longrun.invalid", "k", retry=RetryPolicy(base=0.01)) as client:
        use_transport(client, httpx.MockTransport(answer))
        assert client.submit("demo.steps", {"steps": 1}).id == "j1"
    assert len(keys) == 3 and len(set(keys)) == 1  # every retry carried the same idempotency key


def test_retries_give_up_with_the_api_error() -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"code": "unavailable", "message": "database down", "details": 1}})

    with Client("http://longrun.invalid", "k", retry=RetryPolicy(attempts=2, base=0.01)) as client:
        use_transport(client, httpx.MockTransport(busy))
        with pytest.raises(Unavailable) as down:
            client.get("x")
    assert (down.value.status, down.value.code, down.value.message, down.value.details) == (
        503, "unavailable", "database down", 1)
