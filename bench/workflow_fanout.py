"""Fan-out: a group of 1,000 short children and a step that receives their results, Longrun vs Celery.

Longrun: `POST /v1/workflows` with `{"chord": {"group": [1,000 x demo.steps], "then": demo.collect}}` (one
request, one SQL transaction) through a real gateway, run by a real worker; timed from the POST until the root
job has succeeded, watched by a long-poll of the root that asks at most every 50 ms, as the baseline's client polls
its chord result. Reported with it: the root's own events (its live roll-up, which Celery does not have), the
Redis commands per child (INFO commandstats of the stack's private Redis, before and after) and the SQL statements
per child (counted in every gateway and worker process by bench/_sqlcount/sitecustomize.py).

Baseline, same run, same machine: Celery's `chord(group(1,000 x baseline.short), baseline.collect)` on
bench/_baseline_celery.py (tutorial settings plus a Redis result backend, which a chord needs), run by a real
`celery worker` with the same concurrency on its own private Redis; timed from apply_async until the chord's
result is ready.

Each side runs `--runs` times (default 3), alternating, each run on a fresh stack, since one run's time swings
with whatever else the machine does; the medians are compared and every run's pair is printed.
Target: Longrun's time within 1.5x Celery's. Prints our figure, the baseline, the ratio and MET/MISSED.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
import redis
from _common import REPO, Stack, num, parser, print_table, ratio, say, stack
from _sqlcount.sitecustomize import total as sql_statements
from celery import chord, group

from tests.support.servers import RedisServer

TARGET = 1.5
# The watching client asks at most this often on both sides (Celery's `result.get(interval=...)`): a long-poll
# answered at every root event would make the gateway serve ~1,000 requests on the machine the workers share.
POLL_INTERVAL = 0.05
AUTH = {"Authorization": "Bearer dev-key"}


def commands_by_name(client: redis.Redis) -> dict[str, int]:
    """How often Redis has executed each command so far (scripts' inner calls included)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def per_child_by_name(before: dict[str, int], after: dict[str, int], children: int) -> str:
    """The commands one child cost, biggest first (to see which ones to cut)."""
    used = {name: (after[name] - before.get(name, 0)) / children for name in after}
    return ", ".join(f"{name} {n:.1f}" for name, n in sorted(used.items(), key=lambda kv: -kv[1]) if n >= 0.5)


def group_cpu(leader: int) -> float:
    """CPU seconds used so far by a service's process group (it runs in its own session): every live member,
    plus the children the leader has reaped (a pool process replaced after its task limit)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # pgrp
            used += int(fields[11]) + int(fields[12])  # utime, stime
            if int(entry) == leader:
                used += int(fields[13]) + int(fields[14])  # cutime, cstime
    return used / tick


def redis_cpu(client: redis.Redis) -> float:
    stats = client.info("cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


def cpu_split(before: dict[str, float], after: dict[str, float], children: int) -> str:
    return ", ".join(f"{name} {1000 * (after[name] - before[name]) / children:.1f}" for name in before)


def sql_counting() -> dict[str, str]:
    """The environment that makes the stack's processes count their SQL statements (into a fresh directory)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [os.path.join(here, "_sqlcount"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "BENCH_SQL_COUNT_DIR": tempfile.mkdtemp(prefix="longrun-bench-sql-")}


def run_longrun(st: Stack, children: int, concurrency: int, steps: int, delay: float) -> dict[str, Any]:
    worker = st.worker("--concurrency", str(concurrency))
    gateway = st.gateway()
    client = redis.Redis.from_url(st.redis.url)
    spec = {"chord": {"group": [{"task": "demo.steps", "args": {"steps": steps, "delay": delay}}
                                for _ in range(children)],
                      "then": {"task": "demo.collect", "args": {"label": "fan-in"}}}}
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        counted = st.extra_env["BENCH_SQL_COUNT_DIR"]
        assert worker.process is not None and gateway.process is not None

        def cpu() -> dict[str, float]:
            return {"worker": group_cpu(worker.process.pid), "gateway": group_cpu(gateway.process.pid),
                    "redis": redis_cpu(client)}

        by_name, statements_before, cpu_before = commands_by_name(client), sql_statements(counted), cpu()
        before = sum(by_name.values())
        started = time.perf_counter()
        response = http.post("/v1/workflows", json={"spec": spec}, headers=AUTH)
        response.raise_for_status()
        root = response.json()
        accepted = time.perf_counter() - started
        seq = 0
        while True:
            view = http.get(f"/v1/jobs/{root['id']}", params={"wait": 10, "after_seq": seq}, headers=AUTH).json()
            seq = view["seq"]
            if view["status"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(POLL_INTERVAL)  # at most as often as the baseline's client polls its result
        elapsed = time.perf_counter() - started
        after, cpu_after = commands_by_name(client), cpu()
        used = sum(after.values()) - before
        statements = sql_statements(counted) - statements_before
        say(f"Longrun CPU ms per child: {cpu_split(cpu_before, cpu_after, children)}")
        say(f"Longrun Redis commands per child: {per_child_by_name(by_name, after, children)}")
    if view["status"] != "succeeded":
        raise SystemExit(f"the Longrun workflow ended {view['status']}: {view['error']}")
    inputs = len(view["result"]["inputs"])
    if inputs != children:
        raise SystemExit(f"the fan-in step received {inputs} results, expected {children}")
    events = int(view["seq"])  # the root's own events, 1..seq (its stream keeps only the newest ones for replay)
    client.close()
    return {"seconds": elapsed, "accepted": accepted, "events": events, "per_child": used / children,
            "sql_per_child": statements / children}


def run_celery(st: Stack, children: int, concurrency: int, steps: int, delay: float) -> dict[str, Any]:
    server = RedisServer().start()
    try:
        env = {"BASELINE_BROKER_URL": server.url, "BASELINE_BACKEND_URL": server.url,
               "BASELINE_LEDGER_URL": server.url}
        argv = [sys.executable, "-m", "celery", "-A", "bench._baseline_celery", "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--hostname", "fanout@bench"]
        worker = st.process("celery", argv, env)
        worker.wait_log("ready.", timeout=120)
        sys.path.insert(0, str(REPO))
        from bench._baseline_celery import create_app

        app = create_app(server.url, server.url)
        client = redis.Redis.from_url(server.url)
        by_name = commands_by_name(client)
        before = sum(by_name.values())
        assert worker.process is not None

        def cpu() -> dict[str, float]:
            return {"worker": group_cpu(worker.process.pid), "redis": redis_cpu(client)}

        cpu_before = cpu()
        started = time.perf_counter()
        work = chord(group(app.signature("baseline.short", args=(steps, delay)) for _ in range(children)),
                     app.signature("baseline.collect"))
        result = work.apply_async()
        value = result.get(timeout=600, interval=POLL_INTERVAL)
        elapsed = time.perf_counter() - started
        after = commands_by_name(client)
        used = sum(after.values()) - before
        say(f"Celery CPU ms per child: {cpu_split(cpu_before, cpu(), children)}")
        say(f"Celery Redis commands per child: {per_child_by_name(by_name, after, children)}")
        if value != children:
            raise SystemExit(f"the Celery chord body received {value} results, expected {children}")
        client.close()
        app.close()
        worker.stop()
        return {"seconds": elapsed, "per_child": used / children}
    finally:
        server.stop()


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4, help="worker processes, for both sides")
    ap.add_argument("--steps", type=int, default=1, help="each child's steps")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per step")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs of each side, alternating, each on a fresh stack; the medians are compared")
    args = ap.parse_args()
    say(f"fan-out of {args.children} children (steps={args.steps}, delay={args.delay:g}s), "
        f"concurrency {args.concurrency}, {args.runs} run(s) of each side")
    theirs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    counting = sql_counting()
    try:
        for run in range(1, args.runs + 1):
            # A fresh stack per run (Redis, database, processes): no run inherits another's jobs or caches.
            with stack(args, name="workflow_fanout", extra_env=counting) as st:
                theirs.append(run_celery(st, args.children, args.concurrency, args.steps, args.delay))
                say(f"run {run}: Celery {theirs[-1]['seconds']:.2f}s")
                ours.append(run_longrun(st, args.children, args.concurrency, args.steps, args.delay))
                say(f"run {run}: Longrun {ours[-1]['seconds']:.2f}s "
                    f"({ours[-1]['seconds'] / theirs[-1]['seconds']:.2f}x)")
    finally:
        shutil.rmtree(counting["BENCH_SQL_COUNT_DIR"], ignore_errors=True)

    def median(side: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in side))

    mine, baseline = median(ours, "seconds"), median(theirs, "seconds")
    factor = mine / baseline
    runs = ", ".join(f"{o['seconds']:.1f}/{t['seconds']:.1f}" for o, t in zip(ours, theirs, strict=True))
    print_table(
        f"Group of {args.children} short children then one fan-in step (one request); medians of {args.runs} runs",
        ["", "Longrun workflow", "Celery group + chord", "ratio"],
        [["time to finish (s)", num(mine, 2), num(baseline, 2), ratio(mine, baseline)],
         ["of which accepting the request (s)", num(median(ours, "accepted"), 2), "-", ""],
         ["parent progress events (live roll-up)", str(int(median(ours, "events"))), "none", ""],
         ["Redis commands per child", num(median(ours, "per_child"), 1), num(median(theirs, "per_child"), 1),
          ratio(median(ours, "per_child"), median(theirs, "per_child"))],
         ["SQL statements per child", num(median(ours, "sql_per_child"), 1), "none", ""]],
        [f"each run, Longrun/Celery seconds: {runs} (the machine is shared: compare within a run)"],
    )
    verdict = "MET" if factor <= TARGET else "MISSED"
    print(f"target: Longrun within {TARGET:g}x Celery's time (medians): {factor:.2f}x -> {verdict}")

if __name__ == "__main__":
    main()
