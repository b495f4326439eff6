"""`follow()` against the real stack: gap-free over WebSocket, across a hub restart, and through the SSE and
long-poll fallbacks."""

from __future__ import annotations

import pytest
from clientstack import Stack

from longrun_client import Client, Event
from tests.support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # the first test also starts the stack


def assert_gap_free(events: list[Event]) -> None:
    """From the first frame on, every seq exactly once and in order, ending with the job's end."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert events[-1].done and events[-1].status == "succeeded"


def test_follow_over_websocket(client: Client) -> None:
    job = client.submit("demo.steps", {"steps": 20, "delay": 0.01})
    events = list(client.follow(job.id, since=0))  # from the first event, however far the job already is
    assert events[0].seq == 1 and {e.transport for e in events} == {"ws"}
    assert_gap_free(events)
    assert events[-1].result["steps_run"] == 20
    resumed = list(client.follow(job.id, since=events[-4].seq))  # a late reader resuming from a seq
    assert [e.seq for e in resumed] == [e.seq for e in events[-3:]]


def test_follow_survives_a_hub_restart_without_gap_or_duplicate(stack: Stack, api_key: str) -> None:
    starts = stack.hub.logs().count("Started server process")  # the stack is shared: other tests restart it too
    with stack.client(api_key, reconnect_window=600) as client:
        job = client.submit("demo.steps", {"steps": 40, "delay": 0.1})
        events: list[Event] = []
        for event in client.follow(job.id, transports=("ws",)):
            events.append(event)
            if len(events) == 5:
                assert not event.done  # the restart comes in the middle of the job
                stack.restart_hub()
    assert_gap_free(events)
    assert events[-1].result["steps_run"] == 40
    assert stack.hub.logs().count("Started server process") == starts + 1  # a real restart happened


def test_follow_falls_back_to_sse_when_websockets_are_refused(stack: Stack, api_key: str) -> None:
    hub = stack.hub_without_websockets()
    with stack.client(api_key, hub_url=hub.url) as client:
        job = client.submit("demo.steps", {"steps": 15, "delay": 0.02})
        events = list(client.follow(job.id, since=0))
    assert {e.transport for e in events} == {"sse"}
    assert_gap_free(events)
    hub.stop()


def test_follow_falls_back_to_long_poll_without_a_hub(stack: Stack, api_key: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    with stack.client(api_key, hub_url=nowhere, reconnect_window=0.5) as client:
        job = client.submit("demo.steps", {"steps": 10, "delay": 0.05})
        events = list(client.follow(job.id))
    assert {e.transport for e in events} == {"poll"}
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))  # never a duplicate, never backwards (long-poll may merge events)
    assert events[-1].done and events[-1].status == "succeeded" and events[-1].progress.percent == 100.0
