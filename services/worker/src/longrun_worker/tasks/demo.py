"""`demo.steps`: a task that counts steps, checkpoints every step, and can fail on purpose."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..api import TransientError, task
from ..context import JobContext


class StepsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=100_000, description="how many steps to run")
    delay: float = Field(0.0, ge=0, le=60, description="seconds each step takes")
    fail_times: int = Field(0, ge=0, le=100, description="the first N attempts fail partway through")


class StepsResult(BaseModel):
    steps: int
    steps_run: int
    resumed_from: int
    attempt: int


@task("demo.steps", args=StepsArgs, retries=3, backoff=0.5, backoff_max=5.0)
def steps(ctx: JobContext, args: StepsArgs) -> StepsResult:
    """Run `steps` steps of `delay` seconds each, resuming from the last checkpoint after a retry."""
    start = int((ctx.resumed_from or {}).get("next_step", 0))
    ctx.progress.start(total=args.steps, current=start, stage="steps", message=f"step {start}/{args.steps}")
    ctx.progress.set(meta={"attempt": ctx.attempt, "resumed_from": start})  # free-form, shown as progress.meta
    fail_at = start + (args.steps - start) // 2 if ctx.attempt <= args.fail_times else None
    for step in range(start, args.steps):
        if step == fail_at:
            raise TransientError(f"planned failure at step {step} of attempt {ctx.attempt}")
        if args.delay:
            time.sleep(args.delay)
        ctx.checkpoint({"next_step": step + 1})
        ctx.progress.advance(1, message=f"step {step + 1}/{args.steps}")
    return StepsResult(steps=args.steps, steps_run=args.steps - start, resumed_from=start, attempt=ctx.attempt)


class CollectArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field("", max_length=100, description="a name for this step, echoed in the result")


class CollectResult(BaseModel):
    label: str
    inputs: list[Any]


@task("demo.collect", args=CollectArgs)
def collect(ctx: JobContext, args: CollectArgs) -> CollectResult:
    """A workflow step that returns the results it received from the steps it depends on (`ctx.inputs`)."""
    ctx.progress.start(total=1, stage="collect")
    ctx.progress.advance(1)
    return CollectResult(label=args.label, inputs=ctx.inputs)
