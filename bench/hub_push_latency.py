"""Push latency, one client on one job: Longrun (worker -> hub -> WebSocket) vs Celery's own push path.

Longrun: a real `demo.steps` job submitted through JobStore (as the gateway does), run by a real
`python -m longrun_worker --concurrency 1`; its reporter publishes each step through the Publisher (ts = the
publish time, the worker's wall clock); one asyncio `websockets` client of a real hub process (`python -m
longrun_hub`) on `WS /v1/ws/jobs/{id}?token=…` receives it.
Celery: a real Celery task (this file's `hubbench.progress`) in a real `celery worker -P prefork -c 1` that calls
`self.update_state(state="PROGRESS", meta={..., "ts": time.time()})` every step, on a Redis result backend; the
client is `AsyncResult(task_id).get(on_message=callback, propagate=False)` (one hop through Redis pub/sub).

Same Redis server, same number of steps and the same pause between them. Latency = client receipt wall time - the
`ts` stamped just before the send (Longrun: the event's ts; Celery: meta["ts"]). The first events of each run (sent
before the client was listening, or during its subscription) are not counted.
Target: Longrun p99 <= 5 ms.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from typing import Any

from celery import Celery

BROKER_ENV = "HUBBENCH_CELERY_URL"
QUEUE = "hubbench"

# `celery -A hub_push_latency worker` imports this module: a module-level app, no I/O at import.
celery_app = Celery("hubbench", broker=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"),
                    backend=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"), set_as_current=False)
celery_app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                       worker_prefetch_multiplier=1, task_default_queue=QUEUE, broker_connection_retry_on_startup=True)


@celery_app.task(bind=True, name="hubbench.progress")
def progress_task(self: Any, steps: int, delay: float) -> dict[str, int]:
    for i in range(1, steps + 1):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps, "message": f"step {i}/{steps}",
                                                  "ts": time.time()})
    return {"steps": steps}


TARGET_P99 = 0.005
LONGRUN = "Longrun: worker -> hub -> WebSocket"
CELERY = "Celery: update_state -> get(on_message)"
SKIP = 3  # first events of a run: sent while the client was still subscribing


def run_longrun(st: Any, args: Any) -> dict[str, Any]:
    from _common import say
    from websockets.asyncio.client import connect

    from longrun_common.tokens import mint
    from tests.support.jobs import close_store, make_store, submit
    from tests.support.processes import Service, free_port, python_module, service_env

    port = free_port()
    hub = Service("hub", python_module("longrun_hub"), service_env({**st.env, "LONGRUN_HUB_PORT": str(port)}),
                  st.workdir / "hub.log", port)
    st.services.append(hub)
    hub.start(ready_path="/readyz", timeout=60)
    say("Longrun: hub up; starting a worker (--concurrency 1)")
    st.worker("--concurrency", "1", "--pool", "prefork")
    store = make_store(st.settings)
    samples: list[float] = []
    problems: list[str] = []
    try:
        for run in range(args.runs):
            job = submit(store, "demo.steps", {"steps": args.steps, "delay": args.delay})
            token = mint(st.settings.token_secret, job.tenant, job.id, 3600)[0]

            async def listen(job_id: str = job.id, token: str = token) -> list[tuple[float, dict[str, Any]]]:
                got: list[tuple[float, dict[str, Any]]] = []
                async with connect(f"ws://127.0.0.1:{port}/v1/ws/jobs/{job_id}?token={token}", compression=None,
                                   max_queue=None) as ws:
                    async for text in ws:
                        got.append((time.time(), text))  # type: ignore[arg-type]
                return [(t, json.loads(text)) for t, text in got]

            say(f"Longrun: run {run + 1}/{args.runs}: job {job.id}, {args.steps} steps of {args.delay:g}s")
            frames = asyncio.run(listen())
            last = None
            progress = []
            for t, frame in frames:
                seq = frame.get("seq")
                if frame.get("type") != "snapshot" and last is not None and seq != last + 1 + frame.get("coalesced", 0):
                    problems.append(f"seq {last} -> {seq}")
                last = seq
                if frame.get("type") == "progress":
                    progress.append(t - float(frame["ts"]))
            samples += progress[SKIP:]
            if not frames or frames[-1][1].get("status") != "succeeded":
                problems.append(f"run {run + 1}: no succeeded event at the end")
    finally:
        close_store(store)
    return {"samples": samples, "problems": problems}


def run_celery(st: Any, args: Any) -> dict[str, Any]:
    from _common import REPO, say

    url = st.redis.url.rsplit("/", 1)[0] + "/1"  # same server, its own database
    bench_dir = str(REPO / "bench")
    env = {BROKER_ENV: url, "PYTHONPATH": os.pathsep.join([bench_dir, str(REPO)])}
    argv = [sys.executable, "-m", "celery", "-A", "hub_push_latency:celery_app", "worker", "-P", "prefork", "-c",
            "1", "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO", "-Q", QUEUE,
            "-n", f"hubbench-{os.getpid()}@%h"]
    worker = st.process("celery-worker", argv, env)
    worker.wait_log("ready.", timeout=90)
    app = Celery("hubbench-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    samples: list[float] = []
    problems: list[str] = []
    try:
        for run in range(args.runs):
            say(f"Celery: run {run + 1}/{args.runs}: {args.steps} steps of {args.delay:g}s")
            got: list[tuple[float, dict[str, Any]]] = []
            result = app.send_task("hubbench.progress", args=(args.steps, args.delay), queue=QUEUE)
            result.get(on_message=lambda body, got=got: got.append((time.time(), body)), propagate=False,
                       timeout=args.steps * args.delay * 4 + 60)
            progress = [t - float(body["result"]["ts"]) for t, body in got if body.get("status") == "PROGRESS"]
            currents = [body["result"]["current"] for _t, body in got if body.get("status") == "PROGRESS"]
            if currents and currents != list(range(currents[0], currents[-1] + 1)):
                problems.append(f"run {run + 1}: PROGRESS messages missing or out of order")
            if result.status != "SUCCESS":
                problems.append(f"run {run + 1}: ended {result.status}")
            samples += progress[SKIP:]
    finally:
        app.close()
    return {"samples": samples, "problems": problems}


def main() -> None:
    from _common import ms, parser, percentile, print_table, ratio, say, stack

    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="progress reports per run")
    ap.add_argument("--delay", type=float, default=0.06,
                    help="seconds between two reports (Longrun's reporter publishes at most one event per "
                         "LONGRUN_PROGRESS_INTERVAL=0.05s, so keep it above that to publish every step)")
    ap.add_argument("--runs", type=int, default=1, help="runs per side")
    args = ap.parse_args()
    results = {}
    with stack(args, name="hub-push") as st:
        results[LONGRUN] = run_longrun(st, args)
        st.stop()
        results[CELERY] = run_celery(st, args)
    celery_p99 = percentile(results[CELERY]["samples"], 99)
    celery_p50 = percentile(results[CELERY]["samples"], 50)
    rows = []
    for side in (LONGRUN, CELERY):
        s = results[side]["samples"]
        rows.append([side, len(s), ms(percentile(s, 50)), ms(percentile(s, 90)), ms(percentile(s, 99)),
                     ms(max(s, default=math.nan)), ratio(percentile(s, 50), celery_p50),
                     ratio(percentile(s, 99), celery_p99)])
    p99 = percentile(results[LONGRUN]["samples"], 99)
    met = p99 <= TARGET_P99 and not results[LONGRUN]["problems"]
    print_table(
        f"Push latency, one client on one job: {args.runs} run(s) x {args.steps} reports {args.delay:g}s apart "
        "per side; same Redis",
        ["path", "samples", "p50", "p90", "p99", "max", "p50 vs Celery", "p99 vs Celery"],
        rows,
        [f"target: Longrun p99 <= {TARGET_P99 * 1000:g} ms -> {'MET' if met else 'MISSED'} ({ms(p99)})",
         "latency = client receipt wall time - ts stamped by the sender just before the send (same machine clock)",
         "Longrun: publish script (HINCRBY/HSET/XADD/PUBLISH) -> hub pub/sub -> seam/outbox -> WebSocket frame; "
         "Celery: SET + PUBLISH of the task meta -> the client's own pub/sub connection",
         f"first {SKIP} progress events of each run not counted (client still subscribing)",
         f"Longrun problems: {results[LONGRUN]['problems'] or 'none'}; "
         f"Celery problems: {results[CELERY]['problems'] or 'none'}"],
    )
    say("done")


if __name__ == "__main__":
    main()
