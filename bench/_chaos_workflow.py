"""bench/chaos.py's workflows (issue 11): submitted ahead of the jobs, run through the same kills and Redis wipe.

Two workflows per side, `--workflow-steps` N long steps each (`--workflow-step-seconds`, so the kills and the
wipe find them running): a chain (a group of N `demo.steps`, then `demo.collect`) and a chord (the same group,
`then` `demo.collect`). Longrun submits them with `POST /v1/workflows`; Celery runs the equivalent canvas,
`chain(group(N x baseline.steps), baseline.fan_in)` (which Celery turns into a chord) and
`chord(group(N x baseline.steps), baseline.fan_in)`, with the tutorial's result backend on the broker Redis (a
chord needs one; its counter lives there and is wiped with it).

Judged per workflow: did it end succeeded, did every step complete exactly once (attempts that completed; Celery:
the ledger's completion count), did the fan-in run once and receive all N inputs.

Not a benchmark (running this file only says so).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from celery import Celery, chain, chord, group
from sqlmodel import Session, col, select

from longrun_common.jobs import JobStore
from longrun_common.models import Attempt, Job

SHAPES = ("chain", "chord")
AUTH = {"Authorization": "Bearer dev-key"}


@dataclass
class FlowOutcome:
    """One workflow after the chaos."""

    shape: str
    status: str  # Longrun: the root's status; Celery: succeeded when the fan-in ran with every input
    steps: int  # N
    completed_once: int = 0  # steps that completed exactly once
    never_completed: list[str] = field(default_factory=list)
    completed_twice: list[str] = field(default_factory=list)
    restarted: int = 0  # steps started more than once (their worker was killed, or Redis lost them)
    fan_in_runs: int = 0  # completions of the fan-in step
    fan_in_inputs: int | None = None  # how many inputs it received (None: it never ran)
    note: str = ""

    @property
    def intact(self) -> bool:
        return (self.status == "succeeded" and self.completed_once == self.steps and self.fan_in_runs == 1
                and self.fan_in_inputs == self.steps)

    def summary(self) -> str:
        inputs = "never ran" if self.fan_in_inputs is None else f"{self.fan_in_inputs}/{self.steps} inputs"
        text = (f"{self.status}; steps completed once {self.completed_once}/{self.steps}"
                f" (never {len(self.never_completed)}, twice+ {len(self.completed_twice)}, restarted "
                f"{self.restarted}); fan-in ran {self.fan_in_runs}x, {inputs}")
        return text + (f"; {self.note}" if self.note else "")


def step_args(args: Any) -> dict[str, Any]:
    delay = 0.1
    return {"steps": max(1, round(args.workflow_step_seconds / delay)), "delay": delay}


# --- Longrun ---------------------------------------------------------------------------------------------------

def longrun_spec(shape: str, args: Any) -> dict[str, Any]:
    members = [{"task": "demo.steps", "args": step_args(args)} for _ in range(args.workflow_steps)]
    then = {"task": "demo.collect", "args": {"label": shape}}
    if shape == "chain":
        return {"chain": [{"group": members}, then]}
    return {"chord": {"group": members, "then": then}}


def longrun_submit(gateway_url: str, args: Any) -> dict[str, str]:
    """Shape -> the root job id of each workflow, accepted by the gateway."""
    roots = {}
    with httpx.Client(base_url=gateway_url, timeout=60) as http:
        for shape in SHAPES:
            deadline = time.monotonic() + 30
            # 503 until the gateway sees the catalog just written to SQL (it caches its reading briefly).
            while (response := http.post("/v1/workflows", json={"spec": longrun_spec(shape, args)},
                                         headers=AUTH)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
            response.raise_for_status()
            roots[shape] = str(response.json()["id"])
    return roots


def longrun_judge(store: JobStore, roots: dict[str, str], steps: int) -> list[FlowOutcome]:
    outcomes = []
    with Session(store.engine) as session:
        for shape, root_id in roots.items():
            root = session.get(Job, root_id)
            leaves = list(session.exec(select(Job).where(Job.root_id == root_id, Job.kind == "job")))
            rows = session.exec(select(Attempt).where(col(Attempt.job_id).in_([leaf.id for leaf in leaves])))
            attempts: dict[str, list[Attempt]] = defaultdict(list)
            for row in rows:
                attempts[row.job_id].append(row)
            out = FlowOutcome(shape, root.status if root else "missing", steps)
            for leaf in leaves:
                completed = sum(1 for a in attempts[leaf.id] if a.status == "succeeded")
                out.restarted += len(attempts[leaf.id]) > 1
                if leaf.task == "demo.collect":
                    out.fan_in_runs = completed
                    if leaf.result is not None:
                        out.fan_in_inputs = len(member_results(shape, leaf.result.get("inputs") or []))
                elif completed == 1:
                    out.completed_once += 1
                elif completed == 0:
                    out.never_completed.append(f"{leaf.id} ({leaf.status}, attempt {leaf.attempt})")
                else:
                    out.completed_twice.append(f"{leaf.id} ({completed} completed attempts)")
            outcomes.append(out)
    return outcomes


def member_results(shape: str, inputs: list[Any]) -> list[Any]:
    """The group members' results a fan-in received: a chain's next step gets the group's result (one input, the
    list of the members' results); a chord's `then` gets each member's result as an input."""
    if shape == "chain":
        return list(inputs[0]) if inputs and isinstance(inputs[0], list) else []
    return inputs


# --- Celery ----------------------------------------------------------------------------------------------------

def celery_step_id(shape: str, index: int) -> str:
    return f"wf-{shape}-{index}"


def celery_submit(app: Celery, args: Any) -> None:
    """The equivalent canvas of each shape; its steps record in the ledger under celery_step_id."""
    kwargs = step_args(args)
    for shape in SHAPES:
        members = group(app.signature("baseline.steps", kwargs={"job_id": celery_step_id(shape, i), **kwargs})
                        for i in range(args.workflow_steps))
        fan_in = app.signature("baseline.fan_in", kwargs={"label": shape})
        (chain(members, fan_in) if shape == "chain" else chord(members, fan_in)).apply_async()


def celery_judge(ledger: redis.Redis[bytes], steps: int) -> list[FlowOutcome]:
    outcomes = []
    for shape in SHAPES:
        out = FlowOutcome(shape, "", steps)
        for i in range(steps):
            step = celery_step_id(shape, i)
            done = int(ledger.get(f"done:{step}") or 0)
            out.restarted += ledger.llen(f"starts:{step}") > 1
            if done == 1:
                out.completed_once += 1
            elif done == 0:
                out.never_completed.append(step)
            else:
                out.completed_twice.append(f"{step} ({done} completions)")
        out.fan_in_runs = int(ledger.get(f"fan_in_runs:{shape}") or 0)
        received = ledger.get(f"fan_in:{shape}")
        out.fan_in_inputs = None if received is None else int(json.loads(received))
        out.status = "succeeded" if out.fan_in_runs and out.fan_in_inputs == steps else "never ended"
        if not out.fan_in_runs:
            out.note = ("the chord body never ran: Celery keeps no record of the canvas outside Redis (the chord "
                        "counter and the pending messages were wiped)")
        outcomes.append(out)
    return outcomes


def celery_expected(args: Any) -> int:
    """Ledger completions the canvases add when nothing is lost: every step, and one fan-in per shape."""
    return len(SHAPES) * (args.workflow_steps + 1)


if __name__ == "__main__":
    print("bench/_chaos_workflow.py holds bench/chaos.py's workflows; it is not a benchmark itself.")
