"""SDK and CLI against endpoints other branches are building (run by the lead after merging them):
POST /v1/workflows and GET /v1/jobs/{id}/children, DELETE /v1/dead-letters?filter, progress `meta`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clientstack import Stack

from longrun_client import Client
from tests.support.processes import service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # the first test also starts the stack

LONGRUN = str(Path(sys.executable).with_name("longrun"))


def steps(n: int, **extra: object) -> dict[str, object]:
    return {"task": "demo.steps", "args": {"steps": n, "delay": 0.01, **extra}}


def test_workflow_submit_children_and_follow(client: Client) -> None:
    root = client.submit_workflow({"chain": [steps(3), {"group": [steps(2), steps(4)]}]})
    assert root.kind == "workflow" and root.root_id in (None, root.id)
    events = list(client.follow(root.id, since=0))
    assert events[-1].status == "succeeded" and events[-1].progress.percent == 100.0
    assert any(e.child for e in events)  # the root's events name the child that moved
    children = client.children(root.id).items
    assert children and all(c.parent_id == root.id for c in children)


def test_cli_workflows_submit_follow_shows_the_tree(stack: Stack, api_key: str, tmp_path: Path) -> None:
    spec = tmp_path / "flow.json"
    spec.write_text(json.dumps({"spec": {"group": [steps(3), steps(5)]}, "on_failure": "continue"}))
    env = service_env({"LONGRUN_URL": stack.gateway.url, "LONGRUN_API_KEY": api_key})
    done = subprocess.run([LONGRUN, "workflows", "submit", str(spec), "--follow"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "succeeded"


def test_dead_letters_deleted_by_filter(client: Client) -> None:
    failed = [client.submit("demo.steps", {"steps": 2, "fail_times": 9}) for _ in range(2)]
    for job in failed:
        assert client.wait(job.id, timeout=120).status == "failed"
    client.delete_dead_letters(task="demo.steps")
    assert list(client.iter_dead_letters()) == []


def test_progress_meta_reaches_events_and_the_job(client: Client) -> None:
    # Needs a task that sets meta (the branch adding `ctx.progress.set(meta=…)` extends demo.steps or adds one).
    job = client.submit("demo.steps", {"steps": 3})
    events = list(client.follow(job.id, since=0))
    assert any(e.progress.meta for e in events) or client.get(job.id).progress.meta is not None
