"""Progress reports per second inside a task: Longrun's `ctx.progress.advance()` vs Celery's `update_state()`.

Longrun: a real attempt through `longrun_worker.runner.run_attempt` (the worker's own code path: the job row in
SQL, the `running` event, the Reporter wired to the real Publisher on a real Redis, throttled SQL progress,
the final flush and the `succeeded` event), with a task that calls `ctx.progress.advance(1, message=...)`
N times in a tight loop.
Celery: a bound task run in-process (`apply()`) that calls `self.update_state(state="PROGRESS", meta=...)`
with the same progress dict N times, on a Redis result backend; the same Redis server, the same N.

Reported: calls/s seen by the task's loop (what a report costs the task), the time until the last value was
visible in Redis, how many events Longrun actually published (coalesced) and that the last value arrived.
Target: Longrun >= 10x Celery's calls/s.

`--tracing` adds a third side in the same rounds: the same Longrun attempt with OpenTelemetry on (OTLP/HTTP to
a receiver in this process that accepts and drops the spans), inside a span as the Celery instrumentation
opens one in a worker: what tracing costs a task's progress calls.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from _common import Stack, num, parser, print_table, ratio, say, stack
from celery import Celery, Task
from pydantic import BaseModel

from longrun_common import telemetry
from longrun_common.catalog import TaskPolicy
from longrun_common.celery_app import create_celery
from longrun_common.models import Job
from longrun_common.reader import Reader
from longrun_worker.api import TaskDefinition
from longrun_worker.context import JobContext
from longrun_worker.resources import Resources, get_resources, reset_resources
from longrun_worker.runner import run_attempt
from tests.support.otlp import OtlpReceiver

TARGET = 10.0
LONGRUN = "Longrun ctx.progress.advance()"
TRACED = "Longrun, tracing on"
CELERY = "Celery self.update_state()"


@dataclass
class Result:
    side: str
    calls: int
    loop_seconds: float  # the task's loop of N calls
    visible_seconds: float  # loop start (wall clock) until the last value was in Redis
    events: int  # events (Redis writes of progress) the N calls turned into
    last_ok: bool
    bare_seconds: float = 0.0  # the same loop without any report

    @property
    def cost_per_call(self) -> float:
        return (self.loop_seconds - self.bare_seconds) / self.calls

    @property
    def per_second(self) -> float:
        return self.calls / self.loop_seconds


def meta(i: int, calls: int, started: float) -> dict[str, Any]:
    """The progress dict both sides report (Longrun's Reporter builds the same fields)."""
    elapsed = time.monotonic() - started
    return {"percent": round(i / calls * 100.0, 3), "current": i, "total": calls,
            "message": f"call {i}/{calls}", "stage": "bench",
            "eta_seconds": round(elapsed / i * (calls - i), 3)}


# --- Longrun ---------------------------------------------------------------------------------------------------

class LoopArgs(BaseModel):
    calls: int
    work_us: float = 0.0


def work(seconds: float) -> None:
    """CPU-bound work between two reports (spins, holding the GIL, like Python code doing real work)."""
    if seconds > 0:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass


def bare_loop(calls: int, work_us: float) -> float:
    """The same loop with no reports: what the work alone takes, to get the cost per report."""
    began = time.perf_counter()
    for _ in range(calls):
        work(work_us / 1e6)
    return time.perf_counter() - began


def longrun_definition(seen: dict[str, Any]) -> TaskDefinition:
    def loop(ctx: JobContext, args: LoopArgs) -> dict[str, int]:
        ctx.progress.start(total=args.calls, stage="bench", message=f"call 0/{args.calls}")
        seen["wall_start"] = time.time()
        began = time.perf_counter()
        pause = args.work_us / 1e6
        for i in range(1, args.calls + 1):
            work(pause)
            ctx.progress.advance(1, message=f"call {i}/{args.calls}")
        seen["loop_seconds"] = time.perf_counter() - began
        seen["reporter"] = ctx.progress
        return {"calls": args.calls}

    return TaskDefinition(name="bench.progress", fn=loop, args_model=LoopArgs, policy=TaskPolicy())


def run_traced(res: Resources, calls: int, work_us: float = 0.0) -> Result:
    """`run_longrun` with tracing on, inside a span like the one the Celery instrumentation opens."""
    with telemetry.span("run/bench.progress"):
        result = run_longrun(res, calls, work_us)
    return replace(result, side=TRACED)


def run_longrun(res: Resources, calls: int, work_us: float = 0.0) -> Result:
    seen: dict[str, Any] = {}
    # Submitted as the gateway does (SQL row, `queued` event), without a Celery message: we run it right here.
    row = Job(tenant="dev", task="bench.progress", args={"calls": calls, "work_us": work_us})
    job = replace(res.store, celery=None).submit(row)
    request = SimpleNamespace(hostname="bench@localhost", id=f"{job.id}.1")
    run_attempt(SimpleNamespace(request=request), longrun_definition(seen), res, job.id, 1)  # type: ignore[arg-type]
    events = Reader(res.keys).events_after(res.redis, job.id, 0)
    progress = [e for e in events if e["type"] == "progress"]
    last = progress[-1] if progress else {}
    final = res.store.get(job.id)
    return Result(
        side=LONGRUN,
        calls=calls,
        loop_seconds=seen["loop_seconds"],
        visible_seconds=float(last.get("ts", float("nan"))) - seen["wall_start"],
        events=seen["reporter"].published,
        last_ok=(last.get("progress", {}).get("current") == calls and final is not None
                 and final.status == "succeeded" and events[-1]["status"] == "succeeded"),
    )


# --- Celery ----------------------------------------------------------------------------------------------------

def celery_app(redis_url: str) -> tuple[Celery, Task]:
    app = Celery("bench-progress", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    seen: dict[str, Any] = {}

    @app.task(bind=True, name="bench.progress")
    def loop(self: Task, calls: int, work_us: float = 0.0) -> dict[str, Any]:
        started = time.monotonic()
        seen["wall_start"] = time.time()
        began = time.perf_counter()
        pause = work_us / 1e6
        for i in range(1, calls + 1):
            work(pause)
            self.update_state(state="PROGRESS", meta=meta(i, calls, started))
        seen["loop_seconds"] = time.perf_counter() - began
        seen["visible_at"] = time.time()  # update_state returns after Redis acknowledged the write
        seen["last"] = self.backend.get_task_meta(self.request.id)
        return {"calls": calls}

    loop.seen = seen  # type: ignore[attr-defined]
    return app, loop


def run_celery(task: Task, calls: int, work_us: float = 0.0) -> Result:
    task.apply(args=(calls, work_us))
    seen = task.seen  # type: ignore[attr-defined]
    last = seen["last"]
    return Result(
        side=CELERY,
        calls=calls,
        loop_seconds=seen["loop_seconds"],
        visible_seconds=seen["visible_at"] - seen["wall_start"],
        events=calls,  # one SET + PUBLISH per call: nothing is coalesced
        last_ok=last.get("status") == "PROGRESS" and (last.get("result") or {}).get("current") == calls,
    )


# --- main ------------------------------------------------------------------------------------------------------

def median_by_rate(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.per_second)
    return ordered[len(ordered) // 2]


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000, help="progress calls per task run (same for both)")
    ap.add_argument("--work-us", type=float, default=100.0,
                    help="CPU work between two calls in the second scenario, microseconds (0 = skip it)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per side; the median is reported")
    ap.add_argument("--tracing", action="store_true",
                    help="also run Longrun with OpenTelemetry tracing on (OTLP/HTTP to a local sink)")
    args = ap.parse_args()
    sink = None
    if args.tracing:
        sink = OtlpReceiver(decode=False).start()
        os.environ.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": "bench-progress"})
        telemetry.setup_tracing("bench-progress", sqlalchemy=True, redis=True)

    scenarios = [0.0] + ([args.work_us] if args.work_us > 0 else [])
    results: dict[tuple[float, str], list[Result]] = {}
    with stack(args, name="progress") as st:
        settings = st.settings
        say(f"progress interval {settings.progress_interval}s (LONGRUN_PROGRESS_INTERVAL, default), "
            f"SQL progress every {settings.sql_progress_interval}s")
        broker = create_celery(settings, name="bench-progress-longrun")
        reset_resources()
        res = get_resources(settings, broker)
        app, task = celery_app(st.redis.url)
        try:
            say("warming up")
            with telemetry.suspended():
                run_longrun(res, 100)
            if args.tracing:
                run_traced(res, 100)
            with telemetry.suspended():
                run_celery(task, 100)
            for work_us in scenarios:
                for n in range(args.rounds):
                    say(f"{work_us:g} us of work per call, round {n + 1}/{args.rounds}: {args.calls} calls each")
                    bare = bare_loop(args.calls, work_us)
                    with telemetry.suspended():
                        round_results = [run_longrun(res, args.calls, work_us)]
                    if args.tracing:
                        round_results.append(run_traced(res, args.calls, work_us))
                    with telemetry.suspended():
                        round_results.append(run_celery(task, args.calls, work_us))
                    for result in round_results:
                        result.bare_seconds = bare
                        results.setdefault((work_us, result.side), []).append(result)
        finally:
            reset_resources()
            broker.close()
            app.close()
            telemetry.shutdown_tracing()
            if sink is not None:
                say(f"tracing: {sink.requests} OTLP exports received")
                sink.stop()
        _report(st, args, scenarios, results)


def _report(st: Stack, args: Any, scenarios: list[float],
            results: dict[tuple[float, str], list[Result]]) -> None:
    rows = []
    notes = []
    verdict = ""
    for work_us in scenarios:
        ours = results[(work_us, LONGRUN)]
        theirs = results[(work_us, CELERY)]
        lr, cel = median_by_rate(ours), median_by_rate(theirs)
        traced = [median_by_rate(results[(work_us, TRACED)])] if (work_us, TRACED) in results else []
        label = "tight loop" if not work_us else f"{work_us:g} us work/call"
        for r in (lr, *traced, cel):
            cost = f"{r.cost_per_call * 1e6:.2f} us" if r.cost_per_call > 0 else "~0 (noise)"
            rows.append([label, r.side, num(r.calls), f"{r.loop_seconds * 1000:.1f} ms", num(r.per_second), cost,
                         f"{r.visible_seconds * 1000:.1f} ms", num(r.events), "yes" if r.last_ok else "NO",
                         ratio(r.per_second, cel.per_second)])
        if not work_us:
            met = lr.per_second >= TARGET * cel.per_second
            verdict = (f"target: Longrun >= {TARGET:g}x Celery calls/s (tight loop) -> {'MET' if met else 'MISSED'} "
                       f"({ratio(lr.per_second, cel.per_second)})")
        for t in traced:
            notes.append(f"{label}: tracing on runs at {ratio(t.per_second, lr.per_second)} of tracing off's "
                         f"calls/s ({num(t.per_second)} vs {num(lr.per_second)}); "
                         f"vs Celery {ratio(t.per_second, cel.per_second)}")
        rates = lambda rs: ", ".join(num(r.per_second) for r in rs)  # noqa: E731
        notes.append(f"{label}, calls/s of every round: Longrun [{rates(ours)}]; Celery [{rates(theirs)}]; "
                     f"Longrun events [{', '.join(str(r.events) for r in ours)}]; last value arrived every round: "
                     f"Longrun {all(r.last_ok for r in ours)}, Celery {all(r.last_ok for r in theirs)}")
    print_table(
        f"Progress reports inside a task ({args.calls} calls per run, median of {args.rounds} alternating rounds; "
        "same Redis)",
        ["scenario", "reporter", "calls", "loop time", "calls/s", "cost/call", "last value in Redis",
         "events written", "last value arrived", "vs Celery"],
        rows,
        [verdict,
         f"Longrun coalesces to at most one event per {st.settings.progress_interval * 1000:g} ms (and always the "
         "last value); Celery writes every call (SET + PUBLISH, one round trip)",
         "cost/call: (loop time - the same loop without reports) / calls",
         "last value in Redis: from the loop's first call until the final value was readable in Redis (Longrun: "
         "the last progress event's ts; Celery: when the last update_state returned)",
         *notes],
    )


if __name__ == "__main__":
    main()
