"""One trace across real processes: POST /v1/jobs → SQL commit → Celery publish → task run → progress events
→ the hub's sends (linked), exported over OTLP/HTTP to a receiver inside the test."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.otlp import OtlpReceiver, Span

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer dev-key"}
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP span kinds


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def named(spans: list[Span], service: str, pattern: str) -> list[Span]:
    return [s for s in spans if s.service == service and re.fullmatch(pattern, s.name)]


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_trace_from_submit_to_hub_send(services: ServiceFactory, receiver: OtlpReceiver) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    worker = services("worker", "--concurrency=1", env=otel, wait=False)
    gateway, hub = services("gateway", env=otel, wait=False), services("hub", env=otel, wait=False)
    wait_ready(worker, gateway, hub)  # booted side by side

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post("/v1/jobs", headers=AUTH,
                             json={"task": "demo.steps", "args": {"steps": 4, "delay": 0.3}})
        assert response.status_code == 202, response.text
        job = response.json()
    url = f"ws://127.0.0.1:{hub.port}/v1/ws/jobs/{job['id']}?token={quote(job['stream']['token'])}"
    frames = []
    with connect(url, open_timeout=10) as ws:
        while True:
            frame = json.loads(ws.recv(timeout=30))
            frames.append(frame)
            if frame.get("status") == "succeeded" or frame.get("job", {}).get("status") == "succeeded":
                break
    live_progress = [f for f in frames if f.get("type") == "progress"]
    assert live_progress and all("traceparent" in f for f in live_progress), frames

    def complete(spans: list[Span]) -> bool:
        return (bool(named(spans, "longrun-worker", r"run/demo\.steps"))
                and len(named(spans, "longrun-hub", r"deliver .*")) >= len(live_progress)
                and bool(named(spans, "longrun-gateway", r"POST /v1/jobs")))

    spans = receiver.wait(complete, timeout=30)
    (post,) = [s for s in named(spans, "longrun-gateway", r"POST /v1/jobs") if s.kind == SERVER]
    trace = [s for s in spans if s.trace_id == post.trace_id]
    by_id = {s.span_id: s for s in trace}
    assert not post.parent_id

    # Gateway: the commit and the Celery publish are children of the request.
    (commit,) = named(trace, "longrun-gateway", r"commit jobs?")
    assert post in ancestors(commit, by_id)
    assert any(s.name.startswith("INSERT") for s in trace if commit in ancestors(s, by_id)), [
        (s.service, s.name, s.parent_id[:4], s.span_id[:4]) for s in trace]
    (send,) = [s for s in named(trace, "longrun-gateway", r"apply_async/demo\.steps") if s.kind == PRODUCER]
    assert post in ancestors(send, by_id)
    # Worker: the run continues the trace from the message headers; its events nest under it.
    runs = [s for s in named(trace, "longrun-worker", r"run/demo\.steps") if s.kind == CONSUMER]
    assert len(runs) == 1, [(s.name, s.kind, s.trace_id[:6], s.parent_id[:4]) for s in spans
                            if s.service == "longrun-worker"]
    run = runs[0]
    assert run.parent_id == send.span_id
    published = named(trace, "longrun-worker", r"publish (progress|status)")
    assert {s.attributes.get("longrun.status") for s in published} >= {"running", "succeeded"}
    assert len(named(trace, "longrun-worker", r"publish progress")) >= 1
    assert all(run in ancestors(s, by_id) for s in published)
    # Hub: each delivery is a span of its own that links to the publishing span of that event.
    publishers = {s.span_id for s in trace if s.kind == PRODUCER and s.name.startswith("publish")}
    deliveries = named(spans, "longrun-hub", r"deliver .*")
    linked = [d for d in deliveries if any(t == post.trace_id and sid in publishers for t, sid in d.links)]
    assert len(linked) >= len(live_progress), [(d.name, d.links) for d in deliveries]
    assert all(d.trace_id != post.trace_id and not d.parent_id for d in linked)

    # Every log line the worker wrote for the job carries its id, attempt and trace id.
    lines = [line for line in worker.logs().splitlines() if job["id"] in line and "ForkPoolWorker" in line]
    assert lines
    for line in lines:
        assert f"job_id={job['id']} attempt=1 trace_id={post.trace_id}" in line, line
